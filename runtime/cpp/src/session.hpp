// One ONNX Runtime session per graph, built from bytes already checked against the manifest.
// Session::Run is thread-safe in ONNX Runtime, so one Graph serves every thread.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <string>
#include <vector>

namespace restr_impl {

struct SessionConfig {
  std::string provider = "cpu";  // "cpu" or "cuda"
  int device_id = 0;
  int threads = 0;  // intra-op; 0 = ONNX Runtime's default
};

class Graph {
 public:
  Graph(const std::string& name, const std::string& path, const std::string& bytes, const SessionConfig& config,
        const std::vector<std::string>& inputs, const std::vector<std::string>& outputs);
  // Run with inputs in the order given at construction; returns outputs in that order.
  // Adds the time inside Session::Run to *ort_ms.
  std::vector<Ort::Value> run(const std::vector<Ort::Value>& inputs, double* ort_ms) const;
  // The graph's own inputs or outputs: name -> shape (-1 for a dynamic dimension), and that
  // shape as Python's onnxruntime shows it (['batch', 3, 80, 80]).
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    std::string shape_text;
  };
  std::vector<Tensor> tensors(bool inputs) const;

 private:
  std::string name_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> inputs_, outputs_;
  std::vector<const char*> input_names_, output_names_;
};

}  // namespace restr_impl
