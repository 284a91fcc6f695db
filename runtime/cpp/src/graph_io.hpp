// Generated from runtime/formats.py (cpp_header): do not edit; tests/test_runtime.py checks it is current.
// Each graph's input and output names, in the graph's order (Graph::run passes tensors by position).
#pragma once
#include <string>
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
}  // namespace graph_io

}  // namespace restr_impl
