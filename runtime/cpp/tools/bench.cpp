// restr-bench-cpp EXPORT THREADS REPEATS K: embed + predict K expressions on a fixed synthetic
// photo, REPEATS times after one warm-up; one JSON line per run with the C++ host's total and the
// time inside ONNX Runtime's Run calls (restr_timings), so overhead = total - ort.
#include <cstdio>
#include <cstdlib>
#include <restr/restr_runtime.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: restr-bench-cpp EXPORT THREADS REPEATS K\n");
    return 2;
  }
  try {
    restr::Options o;
    o.threads = std::atoi(argv[2]);
    restr::Predictor p(argv[1], o);
    const int repeats = std::atoi(argv[3]), k = std::atoi(argv[4]);
    const int h = 480, w = 640;  // a photo-sized image: the preprocess graph's resize is part of the work
    std::vector<uint8_t> rgb(size_t(h) * w * 3);
    for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 2654435761u) >> 24);
    std::vector<std::string> texts;
    for (int i = 0; i < k; ++i) texts.push_back(i % 2 ? "the small red circle left of the square" : "the big blue car");
    for (int r = 0; r <= repeats; ++r) {
      restr::Embedding e = p.embed(rgb.data(), h, w);
      restr::Result res = p.predict(e, texts, -1.0f, true);
      restr::Timings t = res.timings();
      if (r == 0) continue;  // warm-up
      std::printf("{\"total_ms\": %.4f, \"ort_ms\": %.4f, \"embed_ms\": %.4f, \"predict_ms\": %.4f}\n", t.embed_total + t.predict_total,
                  t.embed_ort + t.predict_ort, t.embed_total, t.predict_total);
    }
  } catch (const restr::Error& e) {
    std::fprintf(stderr, "restr-bench-cpp: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
