// restr.runtime.Predictor in C++: the export's preprocess graph and vision graph encode an image
// once; the language and fusion_decoder graphs answer its expressions in chunks of max_batch, one
// image's features shared by the chunk; the postprocess graph brings the masks back to the image.
// Everything after open() is const: one Predictor serves many threads (ONNX Runtime's Run is).
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "artifacts.hpp"
#include "restr/restr_runtime.h"
#include "session.hpp"
#include "tokenizer.hpp"

namespace restr_impl {

struct Options {
  SessionConfig session;
  std::string precision = "fp32";
  float threshold = -1.0f;  // < 0: the manifest's
};

struct Embedding {
  int64_t height = 0, width = 0;
  std::array<int64_t, 4> letterbox{};  // [H, W, h, w], the preprocess graph's
  std::vector<float> features;         // (1, N_v, D) visual features, or (1, 3, S, S) image (end-to-end mode)
  std::vector<int64_t> shape;
  std::string graph, sha256;  // the manifest's key and sha256 of the graph that took the image: its export
  restr_timings timings{};
};

struct Result {
  int64_t height = 0, width = 0;
  bool want_probs = false;
  std::vector<std::string> texts;
  std::vector<Ort::Value> post;  // the postprocess graph's probs, mask, score, area (read in place)
  std::vector<float> patch_score;
  std::vector<int> truncated, no_known_words;
  std::vector<std::vector<std::string>> unknown;
  std::vector<std::vector<const char*>> unknown_ptrs;
  restr_timings timings{};
};

class Predictor {
 public:
  Predictor(const std::string& folder, const Options& options);
  std::unique_ptr<Embedding> embed(const uint8_t* rgb, int64_t height, int64_t width, int64_t stride) const;
  std::unique_ptr<Result> predict(const Embedding& emb, const std::vector<std::string>& texts, float threshold, bool want_probs) const;

  const Artifacts& artifacts() const { return art_; }
  const Vocabulary& vocab() const { return vocab_; }
  const std::string& mode() const { return mode_; }
  float threshold() const { return threshold_; }

  static constexpr int64_t kMaxImagePixels = 64000000;  // restr.runtime.transforms.MAX_IMAGE_PIXELS
  static constexpr size_t kMaxExpressions = 256;        // Predictor.max_expressions

 private:
  std::unique_ptr<Graph> load(const std::string& key, const std::vector<std::string>& inputs, const std::vector<std::string>& outputs,
                              const SessionConfig& config) const;
  void check_texts(const std::vector<std::string>& texts) const;

  Artifacts art_;
  Vocabulary vocab_;
  std::string mode_;  // "split" or "end_to_end"
  std::vector<int64_t> features_shape_;  // what embed() keeps: (1, N_v, D) features or the (1, 3, S, S) image
  std::string image_graph_;  // the graph that takes the image (vision, or end_to_end), its manifest key
  float threshold_;
  std::unique_ptr<Graph> pre_, post_, vision_, language_, fusion_, end_to_end_;
};

float check_threshold(float t);

}  // namespace restr_impl
