// An export folder read through manifest.json (docs/artifacts.md), as restr.runtime.artifacts:
// the manifest validated against manifest.schema.json and across fields when opened, each file's
// sha256 checked on the very bytes that are then used.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace restr_impl {

// A tensor as the manifest states it: a dimension is a size, or -1 where the manifest names it (dynamic).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string shape_text;  // as Python's TensorSpec.shape shows it: ('batch', 3, 80, 80)
};

struct GraphInfo {
  std::string key;   // manifest key, e.g. "vision" or "vision_fp16"
  std::string path;  // folder + file
  std::string sha256;
  std::vector<TensorSpec> inputs, outputs;
};

struct Artifacts {
  std::string root;
  int64_t image_size = 0, max_words = 0, num_patches = 0, max_batch = 8;
  float threshold = 0.5f;
  std::string model_name = "unknown";
  std::map<std::string, GraphInfo> graphs;
  std::string vocab_path, vocab_sha256;
  std::string tokenizer = "restr";  // vocab.tokenizer: how expressions are split
  int64_t vocab_size = -1;  // -1: not stated

  // Read and validate folder/manifest.json. Throws Error(RESTR_ARTIFACT_ERROR).
  static Artifacts open(const std::string& folder);
  bool has(const std::string& key) const { return graphs.count(key) > 0; }
  const GraphInfo& graph(const std::string& key) const;
  // The file's bytes, checked against `sha256` (hex; "" = none stated) as read.
  std::string read_verified(const std::string& path, const std::string& sha256) const;
  // vocab.txt's bytes, checked against the manifest's sha256 (if stated), with restr.runtime's message.
  std::string read_vocab() const;
};

// A path as Python's str(pathlib.Path(path)) writes it ("export/" -> "export", "./a//b" -> "a/b",
// "" -> "."): paths in messages and summaries read as restr.runtime's.
std::string py_path(const std::string& path);

// Hex SHA-256 (OpenSSL's EVP).
std::string sha256_hex(const std::string& data);
// What a schema cannot say (restr.runtime.artifacts.check_consistency), or "".
std::string check_consistency(const nlohmann::ordered_json& m);

// The graphs' precisions, as runtime/formats.py's PRECISIONS: fp32 graphs have bare keys ("vision"),
// the others a suffix ("vision_fp16", "vision_int8").
extern const char* const kPrecisions[3];
bool is_precision(const std::string& p);
std::string base_graph(const std::string& key);  // "vision_int8" -> "vision"

}  // namespace restr_impl
