// The C boundary: every exception becomes a restr_status and a one-line, per-thread message.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "artifacts.hpp"
#include "error.hpp"
#include "predictor.hpp"
#include "tokenizer.hpp"
#include "restr/restr_runtime.h"

struct restr_predictor {
  restr_impl::Predictor impl;
};
struct restr_embedding {
  std::unique_ptr<restr_impl::Embedding> impl;
};
struct restr_result {
  std::unique_ptr<restr_impl::Result> impl;
};

namespace {

thread_local std::string last_error;
thread_local std::string text_out;  // restr_text's and restr_export_words' answer

// Formats into a fixed buffer (at most 1023 characters kept) and survives a failed copy: never throws.
restr_status set_error(restr_status code, const char* message, const char* format = "%s") noexcept {
  char line[1024];
  std::snprintf(line, sizeof line, format, message);
  try {
    last_error.assign(line, std::strcspn(line, "\n"));
  } catch (...) {  // no memory even for the message: the status still says what happened
    last_error.clear();
  }
  return code;
}

// Run `body`, turning any exception into a status and message.
template <typename F>
restr_status guarded(F&& body) {
  last_error.clear();
  try {
    body();
    return RESTR_OK;
  } catch (const restr_impl::Error& e) {
    return set_error(e.code(), e.what());
  } catch (const Ort::Exception& e) {
    return set_error(RESTR_RUNTIME_ERROR, e.what(), "ONNX Runtime: %s");
  } catch (const std::bad_alloc&) {
    return set_error(RESTR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return set_error(RESTR_INTERNAL_ERROR, e.what(), "internal error (%s); please report it");
  } catch (...) {
    return set_error(RESTR_INTERNAL_ERROR, "internal error (unknown exception); please report it");
  }
}

void need(const void* p, const char* what) {
  if (!p) restr_impl::fail(RESTR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

}  // namespace

extern "C" {

const char* restr_version(void) { return RESTR_VERSION; }
const char* restr_last_error(void) { return last_error.c_str(); }

void restr_options_init(restr_options* options) {
  if (!options) return;
  options->provider = "cpu";
  options->device_id = 0;
  options->threads = 0;
  options->precision = "fp32";
  options->threshold = -1.0f;
}

restr_status restr_predictor_open(const char* folder, const restr_options* options, restr_predictor** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(folder, "folder");
    restr_options defaults;
    restr_options_init(&defaults);
    const restr_options& o = options ? *options : defaults;
    restr_impl::Options opts;
    opts.session.provider = o.provider ? o.provider : "cpu";
    if (o.device_id < 0) restr_impl::fail(RESTR_INVALID_ARGUMENT, "device_id must be >= 0, got " + std::to_string(o.device_id));
    opts.session.device_id = o.device_id;
    if (o.threads < 0) restr_impl::fail(RESTR_INVALID_ARGUMENT, "threads must be >= 0");
    opts.session.threads = o.threads;
    opts.precision = o.precision ? o.precision : "fp32";
    opts.threshold = o.threshold;
    *out = new restr_predictor{restr_impl::Predictor(folder, opts)};
  });
}

void restr_predictor_free(restr_predictor* predictor) { delete predictor; }

restr_status restr_predictor_info(const restr_predictor* p, const char** model_name, const char** mode, int64_t* image_size,
                                  int64_t* max_words, float* threshold) {
  return guarded([&] {
    need(p, "predictor");
    if (model_name) *model_name = p->impl.artifacts().model_name.c_str();
    if (mode) *mode = p->impl.mode().c_str();
    if (image_size) *image_size = p->impl.artifacts().image_size;
    if (max_words) *max_words = p->impl.artifacts().max_words;
    if (threshold) *threshold = p->impl.threshold();
  });
}

restr_status restr_predictor_vocab_size(const restr_predictor* p, size_t* n) {
  return guarded([&] {
    need(p, "predictor");
    need(n, "n");
    *n = p->impl.vocab().size() - 2;
  });
}

const char* restr_predictor_word(const restr_predictor* p, size_t i) {
  const char* word = nullptr;
  guarded([&] {
    need(p, "predictor");
    const size_t n = p->impl.vocab().size() - 2;  // <pad> and <unk> are no words
    if (i >= n)
      restr_impl::fail(RESTR_INVALID_ARGUMENT, "word index " + std::to_string(i) + " is out of range (the vocabulary has " + std::to_string(n) + " words)");
    word = p->impl.vocab().word(i + 2).c_str();
  });
  return word;
}

restr_status restr_embed(restr_predictor* p, const uint8_t* rgb, int64_t height, int64_t width, int64_t stride, restr_embedding** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(p, "predictor");
    need(rgb, "rgb");
    *out = new restr_embedding{p->impl.embed(rgb, height, width, stride)};
  });
}

void restr_embedding_free(restr_embedding* e) { delete e; }

restr_status restr_embedding_size(const restr_embedding* e, int64_t* height, int64_t* width) {
  return guarded([&] {
    need(e, "embedding");
    if (height) *height = e->impl->height;
    if (width) *width = e->impl->width;
  });
}

restr_status restr_embedding_letterbox(const restr_embedding* e, int64_t out[4]) {
  return guarded([&] {
    need(e, "embedding");
    need(out, "out");
    std::copy(e->impl->letterbox.begin(), e->impl->letterbox.end(), out);
  });
}

restr_status restr_predict(restr_predictor* p, const restr_embedding* e, const char* const* texts, size_t n, float threshold, int want_probs,
                           restr_result** out) {
  return guarded([&] {
    need(out, "out");
    *out = nullptr;
    need(p, "predictor");
    need(e, "embedding");
    if (n) need(texts, "texts");
    if (n > restr_impl::Predictor::kMaxExpressions)  // before reading texts[]: a huge n is a caller's size bug
      restr_impl::fail(RESTR_TEXT_ERROR, std::to_string(n) + " expressions in one call; at most " +
                                             std::to_string(restr_impl::Predictor::kMaxExpressions) + " (max_expressions)");
    std::vector<std::string> t;
    for (size_t i = 0; i < n; ++i) {
      if (!texts[i]) restr_impl::fail(RESTR_INVALID_ARGUMENT, "texts[" + std::to_string(i) + "] is NULL");
      t.emplace_back(texts[i]);
    }
    *out = new restr_result{p->impl.predict(*e->impl, t, threshold, want_probs != 0)};
  });
}

size_t restr_result_count(const restr_result* r) { return r ? r->impl->texts.size() : 0; }

restr_status restr_result_get(const restr_result* r, size_t i, restr_prediction* out) {
  return guarded([&] {
    need(r, "result");
    need(out, "out");
    const restr_impl::Result& x = *r->impl;
    if (i >= x.texts.size()) restr_impl::fail(RESTR_INVALID_ARGUMENT, "index " + std::to_string(i) + " is out of range (" + std::to_string(x.texts.size()) + " predictions)");
    const size_t hw = size_t(x.height * x.width);
    out->text = x.texts[i].c_str();
    out->probs = x.want_probs ? x.post[0].GetTensorData<float>() + i * hw : nullptr;
    out->mask = reinterpret_cast<const uint8_t*>(x.post[1].GetTensorData<bool>()) + i * hw;
    out->score = x.post[2].GetTensorData<float>()[i];
    out->area = x.post[3].GetTensorData<int64_t>()[i];
    out->height = x.height;
    out->width = x.width;
    out->patch_score = x.patch_score[i];
    out->truncated = x.truncated[i];
    out->no_known_words = x.no_known_words[i];
    out->n_unknown = x.unknown[i].size();
    out->unknown_words = x.unknown_ptrs[i].data();
  });
}

restr_status restr_result_timings(const restr_result* r, restr_timings* out) {
  return guarded([&] {
    need(r, "result");
    need(out, "out");
    *out = r->impl->timings;
  });
}

void restr_result_free(restr_result* r) { delete r; }

restr_status restr_text(const char* text, int form, size_t number, const char** out) {
  return guarded([&] {
    need(text, "text");
    need(out, "out");
    *out = nullptr;
    std::string s;
    switch (form) {
      case RESTR_TEXT_WORDS:
        for (const auto& w : restr_impl::split_words(text, number)) s += w + '\n';
        break;
      case RESTR_TEXT_REPR: s = restr_impl::py_repr(text); break;
      case RESTR_TEXT_NO_ACCENTS: s = restr_impl::without_accents(text); break;
      case RESTR_TEXT_PATH: s = restr_impl::py_path(text); break;
      default: restr_impl::fail(RESTR_INVALID_ARGUMENT, "restr_text: no form " + std::to_string(form));
    }
    text_out = std::move(s);
    *out = text_out.c_str();
  });
}

restr_status restr_export_words(const char* folder, const char** out) {
  return guarded([&] {
    need(folder, "folder");
    need(out, "out");
    *out = nullptr;
    const restr_impl::Artifacts art = restr_impl::Artifacts::open(folder);
    const restr_impl::Vocabulary vocab = restr_impl::Vocabulary::parse(art.read_vocab(), art.vocab_path, art.tokenizer);
    std::string s;
    for (size_t i = 2; i < vocab.size(); ++i) s += vocab.word(i) + '\n';  // <pad> and <unk> are no words
    text_out = std::move(s);
    *out = text_out.c_str();
  });
}

}  // extern "C"
