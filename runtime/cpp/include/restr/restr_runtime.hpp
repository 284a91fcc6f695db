// A thin header-only C++17 wrapper over restr_runtime.h: RAII handles, failures as restr::Error
// (status + the library's one-line message). Same ownership as the C API: a Prediction's pointers
// live as long as the Result it came from.
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "restr/restr_runtime.h"

namespace restr {

class Error : public std::runtime_error {
 public:
  Error(restr_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  restr_status status() const noexcept { return status_; }

 private:
  restr_status status_;
};

namespace detail {
inline void check(restr_status s) {
  if (s != RESTR_OK) throw Error(s, restr_last_error());
}
template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const noexcept { Free(p); }
};
}  // namespace detail

using Prediction = restr_prediction;
using Timings = restr_timings;

struct Options {
  std::string provider = "cpu", precision = "fp32";
  int device_id = 0, threads = 0;
  float threshold = -1.0f;  // < 0: the manifest's
};

class Embedding {
 public:
  explicit Embedding(restr_embedding* e) : e_(e, restr_embedding_free) {}
  const restr_embedding* get() const { return e_.get(); }

 private:
  std::shared_ptr<restr_embedding> e_;  // shared: embeddings are immutable, copies are cheap
};

class Result {
 public:
  explicit Result(restr_result* r) : r_(r) {}
  size_t size() const { return restr_result_count(r_.get()); }
  Prediction operator[](size_t i) const {
    Prediction p;
    detail::check(restr_result_get(r_.get(), i, &p));
    return p;
  }
  Timings timings() const {
    Timings t;
    detail::check(restr_result_timings(r_.get(), &t));
    return t;
  }

 private:
  std::unique_ptr<restr_result, detail::Deleter<restr_result, restr_result_free>> r_;
};

class Predictor {
 public:
  explicit Predictor(const std::string& folder, const Options& o = {}) {
    restr_options opts;
    restr_options_init(&opts);
    opts.provider = o.provider.c_str();
    opts.precision = o.precision.c_str();
    opts.device_id = o.device_id;
    opts.threads = o.threads;
    opts.threshold = o.threshold;
    restr_predictor* p = nullptr;
    detail::check(restr_predictor_open(folder.c_str(), &opts, &p));
    p_.reset(p);
  }
  // RGB uint8, `height` rows of `width` pixels, `stride` bytes apart (0: 3 * width).
  Embedding embed(const uint8_t* rgb, int64_t height, int64_t width, int64_t stride = 0) const {
    restr_embedding* e = nullptr;
    detail::check(restr_embed(p_.get(), rgb, height, width, stride ? stride : 3 * width, &e));
    return Embedding(e);
  }
  Result predict(const Embedding& emb, const std::vector<std::string>& texts, float threshold = -1.0f, bool probs = false) const {
    std::vector<const char*> t;
    for (const auto& s : texts) t.push_back(s.c_str());
    restr_result* r = nullptr;
    detail::check(restr_predict(p_.get(), emb.get(), t.data(), t.size(), threshold, probs, &r));
    return Result(r);
  }
  std::vector<std::string> words() const {
    size_t n = 0;
    detail::check(restr_predictor_vocab_size(p_.get(), &n));
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i) out.emplace_back(restr_predictor_word(p_.get(), i));
    return out;
  }
  std::string model_name() const { return info().name; }
  std::string mode() const { return info().mode; }
  float threshold() const { return info().threshold; }
  int64_t max_words() const { return info().max_words; }
  restr_predictor* get() const { return p_.get(); }

 private:
  struct Info {
    std::string name, mode;
    int64_t image_size, max_words;
    float threshold;
  };
  Info info() const {
    const char *name = nullptr, *mode = nullptr;
    Info i{};
    detail::check(restr_predictor_info(p_.get(), &name, &mode, &i.image_size, &i.max_words, &i.threshold));
    i.name = name;
    i.mode = mode;
    return i;
  }
  std::unique_ptr<restr_predictor, detail::Deleter<restr_predictor, restr_predictor_free>> p_;
};

// restr_text: `text` in one of its forms, e.g. text(s, RESTR_TEXT_REPR) for Python's repr(s).
inline std::string text(const std::string& text, restr_text_form form, size_t number = 0) {
  const char* out = nullptr;
  detail::check(restr_text(text.c_str(), form, number, &out));
  return out;
}

namespace detail {
inline std::vector<std::string> lines(const std::string& text) {  // each line ended by '\n'
  std::vector<std::string> out;
  for (size_t at = 0, end; (end = text.find('\n', at)) != std::string::npos; at = end + 1) out.push_back(text.substr(at, end - at));
  return out;
}
}  // namespace detail

// The words restr's tokenizer reads in `text`: "The dog, left." -> {"the", "dog", "left"}.
inline std::vector<std::string> split_words(const std::string& text, size_t number = 0) {
  return detail::lines(restr::text(text, RESTR_TEXT_WORDS, number));
}

// restr_export_words: the export's vocabulary, no graph loaded.
inline std::vector<std::string> export_words(const std::string& folder) {
  const char* out = nullptr;
  detail::check(restr_export_words(folder.c_str(), &out));
  return detail::lines(out);
}

}  // namespace restr
