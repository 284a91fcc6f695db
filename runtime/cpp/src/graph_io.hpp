// Generated from runtime/formats.py (cpp_header): do not edit; tests/test_runtime.py checks it is current.
// Each graph's input and output names, in the graph's order (Graph::run passes tensors by position).
#pragma once
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace restr_impl {

struct GraphIO {
  std::vector<std::string> inputs, outputs;
};

namespace graph_io {
inline const GraphIO end_to_end{{"image", "words", "pad_mask"}, {"pixel_probs", "patch_probs"}};
inline const GraphIO vision{{"image"}, {"visual_features"}};
inline const GraphIO language{{"words", "pad_mask"}, {"linguistic_features"}};
inline const GraphIO fusion_decoder{{"visual_features", "linguistic_features", "pad_mask"}, {"pixel_probs", "patch_probs"}};
inline const GraphIO preprocess{{"rgb"}, {"image", "letterbox"}};
inline const GraphIO postprocess{{"pixel_probs", "letterbox", "threshold"}, {"probs", "mask", "score", "area"}};

// The model graphs (those the manifest check covers): their input and output names as sets.
inline const std::map<std::string, std::pair<std::set<std::string>, std::set<std::string>>> model_graphs{
    {"end_to_end", {{"image", "words", "pad_mask"}, {"pixel_probs", "patch_probs"}}},
    {"vision", {{"image"}, {"visual_features"}}},
    {"language", {{"words", "pad_mask"}, {"linguistic_features"}}},
    {"fusion_decoder", {{"visual_features", "linguistic_features", "pad_mask"}, {"pixel_probs", "patch_probs"}}},
};
// Their tensors' shapes after the first axis: numbers, or S, L, N, D for the manifest's sizes.
inline const std::map<std::string, std::vector<std::string>> tensor_dims{
    {"image", {"3", "S", "S"}},
    {"words", {"L"}},
    {"pad_mask", {"L"}},
    {"pixel_probs", {"1", "S", "S"}},
    {"patch_probs", {"N"}},
    {"visual_features", {"N", "D"}},
    {"linguistic_features", {"L", "D"}},
};
}  // namespace graph_io

}  // namespace restr_impl
