// The C++ host against tests/golden (written by the Python runtime, tests/golden/make_golden.py):
// tokenizer, manifest validation messages, letterbox geometry, masks and scores.
//   test_golden GOLDEN_DIR [EXPORT_DIR]     (without EXPORT_DIR the export-based checks are skipped: 77)
#include <stb/stb_image.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "artifacts.hpp"
#include "check.hpp"
#include "json_schema.hpp"
#include "restr/restr_runtime.hpp"
#include "tokenizer.hpp"

using json = nlohmann::ordered_json;

static void tokenizer(const std::string& golden, const std::string& file) {
  json g = json::parse(check::read(golden + "/" + file));
  const std::string mode = g.value("tokenizer", "restr");
  std::string vocab_text;
  for (const auto& w : g["vocab"]) vocab_text += w.get<std::string>() + "\n";
  restr_impl::Vocabulary vocab = restr_impl::Vocabulary::parse(vocab_text, "golden vocab", mode);
  for (const auto& c : g["cases"]) {
    const std::string text = c["text"];
    std::vector<std::string> words = restr_impl::split_words(text, 0, mode);
    if (json(words) != c["words"]) check::fail(__FILE__, __LINE__, "split_words(" + json(text).dump() + ") = " + json(words).dump() + ", Python: " + c["words"].dump());
    restr_impl::Encoded e = vocab.encode({text}, g["max_words"].get<int64_t>());
    CHECK(json(e.words) == c["ids"]);
    CHECK(bool(e.truncated[0]) == c["truncated"].get<bool>());
    CHECK(json(e.unknown[0]) == c["unknown"]);
    for (size_t i = 0; i < e.words.size(); ++i) CHECK(bool(e.pad_mask[i]) == (e.words[i] == 0));
  }
}

static void manifest(const std::string& golden) {
  json g = json::parse(check::read(golden + "/manifest_cases.json"));
  for (const auto& c : g["cases"]) {
    json m = g["manifest"];
    json* node = &m;
    const json& path = c["path"];
    for (size_t i = 0; i + 1 < path.size(); ++i) node = path[i].is_number() ? &(*node)[path[i].get<size_t>()] : &(*node)[path[i].get<std::string>()];
    if (!path.empty()) {
      const json& last = path.back();
      if (c["value"] == g["delete"]) node->erase(last.get<std::string>());
      else if (last.is_number()) (*node)[last.get<size_t>()] = c["value"];
      else (*node)[last.get<std::string>()] = c["value"];
    }
    std::string err;
    if (auto e = restr_impl::first_schema_error(restr_impl::manifest_schema(), m)) err = *e;
    if (err.empty()) err = restr_impl::check_consistency(m);
    const std::string want = c["error"].is_null() ? "" : c["error"].get<std::string>();
    if (err != want) check::fail(__FILE__, __LINE__, "change " + path.dump() + ": C++ '" + err + "', Python '" + want + "'");
  }
}

static void letterbox(const std::string& golden, const restr::Predictor& p) {
  json g = json::parse(check::read(golden + "/letterbox.json"));
  for (const auto& c : g["cases"]) {
    const int64_t h = c["height"], w = c["width"];
    std::vector<uint8_t> rgb(size_t(h * w * 3), 128);
    restr::Embedding e = p.embed(rgb.data(), h, w);
    int64_t lb[4];
    CHECK(restr_embedding_letterbox(e.get(), lb) == RESTR_OK);
    if (json(std::vector<int64_t>(lb, lb + 4)) != c["letterbox"])
      check::fail(__FILE__, __LINE__, "letterbox of " + std::to_string(h) + "x" + std::to_string(w) + ": " + c["letterbox"].dump());
  }
}

static void predictions(const std::string& golden, const restr::Predictor& p) {
  json g = json::parse(check::read(golden + "/predictions.json"));
  const double atol = g["score_atol"];
  for (const auto& photo : g["photos"]) {
    int w, h, n;
    uint8_t* rgb = stbi_load((golden + "/" + photo["image"].get<std::string>()).c_str(), &w, &h, &n, 3);
    CHECK(rgb != nullptr);
    if (!rgb) continue;
    std::vector<std::string> texts;
    for (const auto& e : photo["expressions"]) texts.push_back(e["text"]);
    restr::Result r = p.predict(p.embed(rgb, h, w), texts);
    stbi_image_free(rgb);
    for (size_t i = 0; i < r.size(); ++i) {
      const json& want = photo["expressions"][i];
      restr::Prediction got = r[i];
      int mw, mh, mn;
      uint8_t* mask = stbi_load((golden + "/" + want["mask"].get<std::string>()).c_str(), &mw, &mh, &mn, 1);
      CHECK(mask && mw == w && mh == h);
      int64_t differ = 0;
      for (int64_t j = 0; mask && j < int64_t(w) * h; ++j) differ += (mask[j] > 127) != (got.mask[j] != 0);
      stbi_image_free(mask);
      CHECK_EQ(differ, int64_t(0));
      CHECK_EQ(got.area, want["area"].get<int64_t>());
      CHECK(std::fabs(got.score - want["score"].get<double>()) <= atol);
      CHECK(std::fabs(got.patch_score - want["patch_score"].get<double>()) <= atol);
      CHECK_EQ(bool(got.no_known_words), want["no_known_words"].get<bool>());
      CHECK_EQ(bool(got.truncated), want["truncated"].get<bool>());
      CHECK(json(std::vector<std::string>(got.unknown_words, got.unknown_words + got.n_unknown)) == want["unknown_words"]);
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: test_golden GOLDEN_DIR [EXPORT_DIR]\n"), 2;
  tokenizer(argv[1], "tokenizer.json");
  tokenizer(argv[1], "tokenizer_authors.json");
  manifest(argv[1]);
  if (argc < 3 || std::string(argv[2]).empty()) {
    std::printf("test_golden: no export given: letterbox and prediction checks skipped\n");
    return check::failures ? check::finish("test_golden") : 77;
  }
  restr::Options o;
  o.threads = 1;
  restr::Predictor p(argv[2], o);
  letterbox(argv[1], p);
  predictions(argv[1], p);
  return check::finish("test_golden");
}
