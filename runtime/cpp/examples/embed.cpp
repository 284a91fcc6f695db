// Embedding restr_runtime in a C++ program: one image, two expressions, masks in memory.
//   embed_cpp EXPORT_DIR
#include <cstdio>
#include <restr/restr_runtime.hpp>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: embed_cpp EXPORT_DIR\n"), 2;
  try {
    restr::Predictor predictor(argv[1]);                    // checks the manifest and checksums
    std::vector<uint8_t> rgb(120 * 160 * 3, 90);            // your decoded RGB image, 160x120
    restr::Embedding image = predictor.embed(rgb.data(), 120, 160);  // encode once...
    restr::Result result = predictor.predict(image, {"the red car", "the dog on the left"});  // ...ask many
    for (size_t i = 0; i < result.size(); ++i) {
      restr::Prediction p = result[i];                     // p.mask: height*width bytes, valid while `result` lives
      std::printf("%s: area %lld, score %.3f\n", p.text, (long long)p.area, p.score);
    }
  } catch (const restr::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
