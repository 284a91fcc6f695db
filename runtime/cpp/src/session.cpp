#include "session.hpp"

#include <algorithm>
#include <chrono>

#include "error.hpp"

namespace restr_impl {

namespace {

// One ONNX Runtime environment per process, made on first use (thread-safe static), errors only.
// Never destroyed: it must outlive every session, including a predictor still open at exit.
Ort::Env& env() {
  static Ort::Env* e = new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "restr");
  return *e;
}

// The C++ API's table of functions, taken when the library loads (GetApi(ORT_API_VERSION)): null
// when the libonnxruntime.so.1 found at run time is older than the headers this was built with.
// Every Ort:: call would then dereference it; a status instead.
void check_api() {
  if (Ort::Global<void>::api_) return;
  const char* version = OrtGetApiBase()->GetVersionString();
  fail(RESTR_RUNTIME_ERROR, std::string("the ONNX Runtime library loaded (") + (version ? version : "unknown version") +
                                ") is too old: restr_runtime needs ONNX Runtime 1." + std::to_string(ORT_API_VERSION) + " or newer");
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

void append_cuda(Ort::SessionOptions& opts, int device_id) {
  const OrtApi& api = Ort::GetApi();
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
  std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> guard(cuda, api.ReleaseCUDAProviderOptions);
  const std::string device = std::to_string(device_id);
  const char* keys[] = {"device_id"};
  const char* values[] = {device.c_str()};
  Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 1));
  Ort::ThrowOnError(api.SessionOptionsAppendExecutionProvider_CUDA_V2(opts, cuda));
}

}  // namespace

Graph::Graph(const std::string& name, const std::string& path, const std::string& bytes, const SessionConfig& config,
             const std::vector<std::string>& inputs, const std::vector<std::string>& outputs)
    : name_(name), inputs_(inputs), outputs_(outputs) {
  check_api();
  Ort::Env& ort = env();  // before the CUDA provider: loading it logs through the environment's logger
  Ort::SessionOptions opts;
  opts.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  opts.SetLogSeverityLevel(3);
  if (config.threads > 0) {  // as restr.runtime.runners: intra-op threads, one inter-op thread
    opts.SetIntraOpNumThreads(config.threads);
    opts.SetInterOpNumThreads(1);
  }
  if (config.provider == "cuda") {
    // the words of restr.runtime.runners.choose_providers, for a build without CUDA
    const std::vector<std::string> have = Ort::GetAvailableProviders();
    if (std::find(have.begin(), have.end(), "CUDAExecutionProvider") == have.end()) {
      std::string list;
      for (const auto& p : have) list += (list.empty() ? "" : ", ") + p;
      fail(RESTR_RUNTIME_ERROR, "CUDAExecutionProvider is not available in this onnxruntime build (has: " + list + ")");
    }
    try {
      append_cuda(opts, config.device_id);
    } catch (const Ort::Exception& e) {  // a CUDA build whose CUDA, cuDNN or GPU is missing
      fail(RESTR_RUNTIME_ERROR, "CUDA execution provider unavailable: " + first_line(e.what()) +
                                    " (it needs the CUDA and cuDNN libraries of the onnxruntime-gpu wheel's release on the "
                                    "library path, and a GPU; or use provider cpu)");
    }
  } else if (config.provider != "cpu") {
    fail(RESTR_INVALID_ARGUMENT, "provider must be cpu or cuda, got '" + config.provider + "'");
  }
  try {
    session_ = std::make_unique<Ort::Session>(ort, bytes.data(), bytes.size(), opts);
  } catch (const Ort::Exception& e) {
    fail(RESTR_ARTIFACT_ERROR, path + ": not a loadable ONNX graph (" + first_line(e.what()) + ")");
  }
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> have_in, have_out;
  for (size_t i = 0; i < session_->GetInputCount(); ++i) have_in.push_back(session_->GetInputNameAllocated(i, alloc).get());
  for (size_t i = 0; i < session_->GetOutputCount(); ++i) have_out.push_back(session_->GetOutputNameAllocated(i, alloc).get());
  for (const auto& n : inputs_)
    if (std::find(have_in.begin(), have_in.end(), n) == have_in.end()) fail(RESTR_ARTIFACT_ERROR, path + ": graph has no input '" + n + "'");
  for (const auto& n : outputs_)
    if (std::find(have_out.begin(), have_out.end(), n) == have_out.end()) fail(RESTR_ARTIFACT_ERROR, path + ": graph has no output '" + n + "'");
  for (const auto& n : inputs_) input_names_.push_back(n.c_str());
  for (const auto& n : outputs_) output_names_.push_back(n.c_str());
}

std::vector<Graph::Tensor> Graph::tensors(bool inputs) const {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<Tensor> out;
  const size_t n = inputs ? session_->GetInputCount() : session_->GetOutputCount();
  for (size_t i = 0; i < n; ++i) {
    Tensor t;
    t.name = (inputs ? session_->GetInputNameAllocated(i, alloc) : session_->GetOutputNameAllocated(i, alloc)).get();
    Ort::TypeInfo type = inputs ? session_->GetInputTypeInfo(i) : session_->GetOutputTypeInfo(i);
    if (type.GetONNXType() == ONNX_TYPE_TENSOR) {
      auto info = type.GetTensorTypeAndShapeInfo();
      t.shape = info.GetShape();
      std::vector<const char*> symbols(t.shape.size(), nullptr);
      info.GetSymbolicDimensions(symbols.data(), symbols.size());
      for (size_t d = 0; d < t.shape.size(); ++d) {
        std::string dim = t.shape[d] >= 0                      ? std::to_string(t.shape[d])
                          : symbols[d] && *symbols[d] != '\0' ? "'" + std::string(symbols[d]) + "'"
                                                                : "None";
        t.shape_text += (d ? ", " : "") + dim;
      }
    }
    t.shape_text = "[" + t.shape_text + "]";
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<Ort::Value> Graph::run(const std::vector<Ort::Value>& inputs, double* ort_ms) const {
  auto t0 = std::chrono::steady_clock::now();
  try {
    auto out = session_->Run(Ort::RunOptions{nullptr}, input_names_.data(), inputs.data(), inputs.size(), output_names_.data(),
                             output_names_.size());
    *ort_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
  } catch (const Ort::Exception& e) {
    fail(RESTR_RUNTIME_ERROR, name_ + ": ONNX Runtime failed: " + first_line(e.what()));
  }
}

}  // namespace restr_impl
