#include "predictor.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>

#include "error.hpp"
#include "graph_io.hpp"  // the graphs' tensor names and order, generated from runtime/formats.py

namespace restr_impl {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

const Ort::MemoryInfo& cpu() {
  static const Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return info;
}

// A tensor over a buffer the caller keeps alive (no copy; ONNX Runtime does not write inputs).
template <typename T>
Ort::Value view(const T* data, size_t count, const std::vector<int64_t>& shape, ONNXTensorElementDataType type) {
  return Ort::Value::CreateTensor(cpu(), const_cast<T*>(data), count * sizeof(T), shape.data(), shape.size(), type);
}

std::string graph_key(const std::string& graph, const std::string& precision) {
  return precision == "fp32" ? graph : graph + "_" + precision;
}

}  // namespace

void check_io(const GraphInfo& info, const Graph& graph);

float check_threshold(float t) {
  if (!(t >= 0.0f && t <= 1.0f)) fail(RESTR_INVALID_ARGUMENT, "threshold must be between 0 and 1, got " + std::to_string(t));
  return t;
}

Predictor::Predictor(const std::string& folder, const Options& options) : art_(Artifacts::open(folder)) {
  if (!is_precision(options.precision))
    fail(RESTR_INVALID_ARGUMENT, "precision must be fp32, fp16 or int8, got '" + options.precision + "'");
  threshold_ = options.threshold < 0 ? art_.threshold : check_threshold(options.threshold);
  vocab_ = Vocabulary::parse(art_.read_vocab(), art_.vocab_path, art_.tokenizer);
  if (art_.vocab_size >= 0 && size_t(art_.vocab_size) != vocab_.size())
    fail(RESTR_ARTIFACT_ERROR, art_.vocab_path + ": " + std::to_string(vocab_.size()) + " words, but the manifest says " +
                                   std::to_string(art_.vocab_size));
  for (const char* g : {"preprocess", "postprocess"})
    if (!art_.has(g)) fail(RESTR_ARTIFACT_ERROR, art_.root + ": the export has no '" + std::string(g) + "' graph (re-export with a current restr-export)");
  const std::string p = options.precision;
  bool split = art_.has(graph_key("vision", p)) && art_.has(graph_key("language", p)) && art_.has(graph_key("fusion_decoder", p));
  mode_ = !split && art_.has(graph_key("end_to_end", p)) ? "end_to_end" : "split";
  const SessionConfig& c = options.session;
  if (mode_ == "split") {  // the model graphs first, then the processing graphs: restr.runtime's order (its errors name the same graph)
    vision_ = load(graph_key("vision", p), graph_io::vision.inputs, graph_io::vision.outputs, c);
    language_ = load(graph_key("language", p), graph_io::language.inputs, graph_io::language.outputs, c);
    fusion_ = load(graph_key("fusion_decoder", p), graph_io::fusion_decoder.inputs, graph_io::fusion_decoder.outputs, c);
  } else {
    end_to_end_ = load(graph_key("end_to_end", p), graph_io::end_to_end.inputs, graph_io::end_to_end.outputs, c);
  }
  image_graph_ = graph_key(mode_ == "split" ? "vision" : "end_to_end", p);
  const int64_t S = art_.image_size;
  features_shape_ = {1, 3, S, S};
  if (mode_ == "split")  // the vision graph's visual_features at batch 1 (its other dimensions are fixed: check_io)
    for (const TensorSpec& t : art_.graph(graph_key("vision", p)).outputs)
      if (t.name == "visual_features") features_shape_ = t.shape, features_shape_[0] = 1;
  pre_ = load("preprocess", graph_io::preprocess.inputs, graph_io::preprocess.outputs, c);
  post_ = load("postprocess", graph_io::postprocess.inputs, graph_io::postprocess.outputs, c);
}

std::unique_ptr<Graph> Predictor::load(const std::string& key, const std::vector<std::string>& inputs, const std::vector<std::string>& outputs,
                                       const SessionConfig& config) const {
  const GraphInfo& g = art_.graph(key);
  auto graph = std::make_unique<Graph>(key, g.path, art_.read_verified(g.path, g.sha256), config, inputs, outputs);
  check_io(g, *graph);
  return graph;
}

// The graph's inputs and outputs are the manifest's: names, ranks, fixed dimensions (as
// restr.runtime.runners.OrtRunner._check_io). The host sizes its buffers by the manifest, so a graph
// that disagrees is refused here rather than misread later.
void check_io(const GraphInfo& info, const Graph& graph) {
  for (bool inputs : {true, false}) {
    const std::vector<TensorSpec>& specs = inputs ? info.inputs : info.outputs;
    if (specs.empty() && !inputs) continue;
    std::vector<Graph::Tensor> have = graph.tensors(inputs);
    bool ok = have.size() == specs.size();
    for (const TensorSpec& s : specs) {
      auto t = std::find_if(have.begin(), have.end(), [&](const Graph::Tensor& x) { return x.name == s.name; });
      ok = ok && t != have.end() && t->shape.size() == s.shape.size();
      for (size_t d = 0; ok && d < s.shape.size(); ++d) ok = s.shape[d] < 0 || t->shape[d] == s.shape[d];
    }
    if (!ok) {
      std::string got, want;
      for (const auto& t : have) got += (got.empty() ? "" : ", ") + ("'" + t.name + "': ") + t.shape_text;
      for (const auto& s : specs) want += (want.empty() ? "" : ", ") + ("'" + s.name + "': ") + s.shape_text;
      fail(RESTR_ARTIFACT_ERROR, info.path + ": graph " + (inputs ? "inputs" : "outputs") + " {" + got + "} do not match the manifest's {" + want + "}");
    }
  }
}

std::unique_ptr<Embedding> Predictor::embed(const uint8_t* rgb, int64_t height, int64_t width, int64_t stride) const {
  auto t0 = Clock::now();
  if (height < 0) fail(RESTR_IMAGE_ERROR, "image height is negative (" + std::to_string(height) + ")");
  if (width < 0) fail(RESTR_IMAGE_ERROR, "image width is negative (" + std::to_string(width) + ")");
  if (height == 0 || width == 0) fail(RESTR_IMAGE_ERROR, "image has zero size (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  if (width > kMaxImagePixels / height)
    fail(RESTR_IMAGE_ERROR, "image of " + std::to_string(width) + "x" + std::to_string(height) + " pixels is larger than the 64,000,000 allowed");
  if (stride < 3 * width) fail(RESTR_IMAGE_ERROR, "row stride " + std::to_string(stride) + " is below 3 * width = " + std::to_string(3 * width));
  if (stride > PTRDIFF_MAX / height)  // the rows would span more than an address space: a wrong stride
    fail(RESTR_IMAGE_ERROR, "row stride " + std::to_string(stride) + " is too large for " + std::to_string(height) + " rows");
  auto e = std::make_unique<Embedding>();
  e->height = height;
  e->width = width;
  e->graph = image_graph_;
  e->sha256 = art_.graph(image_graph_).sha256;
  std::vector<uint8_t> packed;
  const uint8_t* pixels = rgb;
  if (stride != 3 * width) {  // the graph takes (H, W, 3) rows back to back
    packed.resize(size_t(height * width * 3));
    for (int64_t y = 0; y < height; ++y) std::copy_n(rgb + y * stride, 3 * width, packed.data() + y * 3 * width);
    pixels = packed.data();
  }
  double ort = 0;
  std::vector<Ort::Value> in;
  in.push_back(view(pixels, size_t(height * width * 3), {height, width, 3}, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8));
  std::vector<Ort::Value> pre = pre_->run(in, &ort);
  std::copy_n(pre[1].GetTensorData<int64_t>(), 4, e->letterbox.begin());
  e->timings.preprocess = ms_since(t0);
  if (mode_ == "split") {
    auto t2 = Clock::now();
    std::vector<Ort::Value> vin;
    vin.push_back(std::move(pre[0]));
    std::vector<Ort::Value> out = vision_->run(vin, &ort);
    e->shape = out[0].GetTensorTypeAndShapeInfo().GetShape();
    const float* f = out[0].GetTensorData<float>();
    e->features.assign(f, f + out[0].GetTensorTypeAndShapeInfo().GetElementCount());
    e->timings.vision = ms_since(t2);
  } else {
    e->shape = pre[0].GetTensorTypeAndShapeInfo().GetShape();
    const float* f = pre[0].GetTensorData<float>();
    e->features.assign(f, f + pre[0].GetTensorTypeAndShapeInfo().GetElementCount());
  }
  e->timings.embed_ort = ort;
  e->timings.embed_total = ms_since(t0);
  return e;
}

void Predictor::check_texts(const std::vector<std::string>& texts) const {
  if (texts.empty()) fail(RESTR_TEXT_ERROR, "no expression given");
  if (texts.size() > kMaxExpressions)
    fail(RESTR_TEXT_ERROR, std::to_string(texts.size()) + " expressions in one call; at most " + std::to_string(kMaxExpressions) + " (max_expressions)");
}

std::unique_ptr<Result> Predictor::predict(const Embedding& emb, const std::vector<std::string>& texts, float threshold, bool want_probs) const {
  auto t0 = Clock::now();
  check_texts(texts);
  const float thr = threshold < 0 ? threshold_ : check_threshold(threshold);
  // Another export's features (or image, in another mode) mean nothing to these graphs, even of
  // the same shape: an embedding carries the graph that made it (restr.runtime's EmbeddingError).
  const std::string& ours = art_.graph(image_graph_).sha256;
  if (emb.graph != image_graph_ || emb.sha256 != ours) {
    auto head = [](const std::string& sha) { return sha.empty() ? std::string("?") : sha.substr(0, 12); };
    fail(RESTR_INVALID_ARGUMENT, "this image embedding was made by another export (its " + emb.graph + " graph has sha256 " + head(emb.sha256) +
                                     "..., this predictor's " + head(ours) + "...): embed the image again with this predictor");
  }
  if (emb.shape != features_shape_) {  // another export's or mode's: its data would be read as something else
    auto text = [](const std::vector<int64_t>& v) {
      std::string s;
      for (int64_t d : v) s += (s.empty() ? "" : ", ") + std::to_string(d);
      return "[" + s + "]";
    };
    fail(RESTR_INVALID_ARGUMENT, "the embedding was made by another predictor (it holds " + text(emb.shape) + ", this " + mode_ +
                                     " predictor takes " + text(features_shape_) + "): embed the image with this predictor");
  }
  Encoded enc = vocab_.encode(texts, art_.max_words);
  for (size_t i = 0; i < texts.size(); ++i)
    if (enc.split[i].empty()) fail(RESTR_TEXT_ERROR, "expression " + std::to_string(i + 1) + " (" + py_repr(texts[i]) + ") is empty: it has no words");
  const int64_t K = int64_t(texts.size()), L = art_.max_words, S = art_.image_size, N = art_.num_patches;
  auto r = std::make_unique<Result>();
  r->timings = emb.timings;
  double ort = 0;
  std::vector<float> pixel(size_t(K * S * S)), patch(size_t(K * N));
  for (int64_t i = 0; i < K; i += art_.max_batch) {
    const int64_t b = std::min(art_.max_batch, K - i);
    const int64_t* words = enc.words.data() + i * L;
    const uint8_t* pad = enc.pad_mask.data() + i * L;
    std::vector<Ort::Value> out;
    auto t1 = Clock::now();
    if (mode_ == "split") {
      std::vector<Ort::Value> lin;
      lin.push_back(view(words, size_t(b * L), {b, L}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64));
      lin.push_back(view(pad, size_t(b * L), {b, L}, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL));
      std::vector<Ort::Value> l = language_->run(lin, &ort);
      auto t2 = Clock::now();
      r->timings.language += std::chrono::duration<double, std::milli>(t2 - t1).count();
      std::vector<Ort::Value> fin;  // one image's features shared by the chunk (image_batch 1)
      fin.push_back(view(emb.features.data(), emb.features.size(), emb.shape, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
      fin.push_back(std::move(l[0]));
      fin.push_back(view(pad, size_t(b * L), {b, L}, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL));
      out = fusion_->run(fin, &ort);
      r->timings.fusion_decoder += ms_since(t2);
    } else {
      std::vector<float> images;  // the image repeated for each expression of the chunk
      for (int64_t j = 0; j < b; ++j) images.insert(images.end(), emb.features.begin(), emb.features.end());
      std::vector<Ort::Value> ein;
      ein.push_back(view(images.data(), images.size(), {b, 3, S, S}, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
      ein.push_back(view(words, size_t(b * L), {b, L}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64));
      ein.push_back(view(pad, size_t(b * L), {b, L}, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL));
      out = end_to_end_->run(ein, &ort);
      r->timings.fusion_decoder += ms_since(t1);
    }
    std::copy_n(out[0].GetTensorData<float>(), size_t(b * S * S), pixel.data() + i * S * S);
    std::copy_n(out[1].GetTensorData<float>(), size_t(b * N), patch.data() + i * N);
  }
  auto t3 = Clock::now();
  std::vector<Ort::Value> pin;
  pin.push_back(view(pixel.data(), pixel.size(), {K, 1, S, S}, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  pin.push_back(view(emb.letterbox.data(), 4, {4}, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64));
  pin.push_back(view(&thr, 1, {1}, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  r->post = post_->run(pin, &ort);
  r->timings.postprocess = ms_since(t3);

  r->height = emb.height;
  r->width = emb.width;
  r->want_probs = want_probs;
  r->texts = texts;
  for (int64_t i = 0; i < K; ++i) {
    r->patch_score.push_back(*std::max_element(patch.begin() + i * N, patch.begin() + (i + 1) * N));
    r->truncated.push_back(enc.truncated[size_t(i)]);
    std::vector<std::string> unknown;  // each word once, in order
    for (const auto& w : enc.unknown[size_t(i)])
      if (std::find(unknown.begin(), unknown.end(), w) == unknown.end()) unknown.push_back(w);
    const auto& words = enc.split[size_t(i)];
    bool none = true;  // no content word known: every word a function word or unknown
    for (size_t j = 0; j < words.size() && j < size_t(L); ++j) none = none && (is_function_word(words[j]) || !vocab_.contains(words[j]));
    r->no_known_words.push_back(none);
    r->unknown.push_back(std::move(unknown));
  }
  for (const auto& u : r->unknown) {
    std::vector<const char*> p;
    for (const auto& w : u) p.push_back(w.c_str());
    r->unknown_ptrs.push_back(std::move(p));
  }
  r->timings.predict_ort = ort;
  r->timings.predict_total = ms_since(t0);
  return r;
}

}  // namespace restr_impl
