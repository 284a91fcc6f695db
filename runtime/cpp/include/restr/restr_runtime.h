/* restr_runtime: referring image segmentation (image + phrase -> mask) on a restr export folder,
 * the C++ host of restr.runtime.Predictor (same graphs, tokenizer and results).
 *
 * Conventions, for every function:
 *  - a restr_status is returned; on failure restr_last_error() holds one line saying why (it is
 *    per thread and valid until this thread's next restr_* call). Nothing throws or aborts.
 *  - handles (restr_predictor, restr_embedding, restr_result) are opaque, made by the library and
 *    freed by the caller with their *_free function (NULL is accepted and ignored).
 *  - buffers passed in (images, texts) are the caller's; the library does not keep them.
 *  - pointers handed out (masks, probabilities, words, messages) belong to the handle they come
 *    from and stay valid until that handle is freed.
 *  - one restr_predictor may be used from many threads at once; embeddings and results are
 *    immutable and may be shared too.
 */
#ifndef RESTR_RUNTIME_H
#define RESTR_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(RESTR_BUILDING)
#define RESTR_API __attribute__((visibility("default")))
#else
#define RESTR_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum restr_status {
  RESTR_OK = 0,
  RESTR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad option or threshold */
  RESTR_ARTIFACT_ERROR = 2,   /* export folder, manifest, graph or checksum unusable */
  RESTR_IMAGE_ERROR = 3,      /* zero-size, oversized or badly described image */
  RESTR_TEXT_ERROR = 4,       /* no expression, an expression without words, invalid UTF-8 */
  RESTR_RUNTIME_ERROR = 5,    /* ONNX Runtime failed (including an unavailable CUDA provider) */
  RESTR_OUT_OF_MEMORY = 6,
  RESTR_INTERNAL_ERROR = 7    /* a bug: please report the message */
} restr_status;

typedef struct restr_predictor restr_predictor;
typedef struct restr_embedding restr_embedding;
typedef struct restr_result restr_result;

/* Options for restr_predictor_open; fill with restr_options_init, then change fields. */
typedef struct restr_options {
  const char *provider;  /* "cpu" (default) or "cuda" (ONNX Runtime's CUDA EP, CUDA_V2 API) */
  int device_id;         /* CUDA device, default 0 */
  int threads;           /* ONNX Runtime intra-op threads; 0 = its default (one per core) */
  const char *precision; /* "fp32" (default), "fp16" or "int8": which graphs of the export run */
  float threshold;       /* mask threshold in [0, 1]; < 0 = the manifest's */
} restr_options;

/* One expression's answer; every pointer belongs to the restr_result it came from. */
typedef struct restr_prediction {
  const char *text;               /* the expression as given */
  const uint8_t *mask;            /* height*width bytes, row-major, 1 = in the mask, 0 = not */
  const float *probs;             /* height*width pixel probabilities, or NULL if not asked for */
  int64_t height, width;          /* the original image's size */
  int64_t area;                   /* pixels in the mask */
  float score;                    /* mean probability inside the mask (0 for an empty mask) */
  float patch_score;              /* highest patch score y_p */
  int truncated;                  /* 1: more words than the model reads (max_words); the rest were dropped */
  int no_known_words;             /* 1: no content word is in the vocabulary, the mask is a guess */
  size_t n_unknown;               /* words read as <unk>, each once, in order */
  const char *const *unknown_words;
} restr_prediction;

/* Milliseconds. *_ort: inside ONNX Runtime's Run calls; the rest of *_total is the host's own work. */
typedef struct restr_timings {
  double preprocess, vision;                    /* the image's encoding (restr_embed) */
  double language, fusion_decoder, postprocess; /* this restr_predict call, totals over its expressions
                                                   (end-to-end exports: fusion_decoder is the whole graph) */
  double embed_ort, embed_total;                /* restr_embed */
  double predict_ort, predict_total;            /* this restr_predict call */
} restr_timings;

RESTR_API const char *restr_version(void);
/* This thread's last error message ("" if none). Owned by the library. */
RESTR_API const char *restr_last_error(void);
RESTR_API void restr_options_init(restr_options *options);

/* Open an export folder (manifest validated, each graph's sha256 checked on the bytes loaded).
 * options may be NULL (defaults). *out is set on success; free it with restr_predictor_free. */
RESTR_API restr_status restr_predictor_open(const char *folder, const restr_options *options, restr_predictor **out);
RESTR_API void restr_predictor_free(restr_predictor *predictor);

/* Facts about the opened export. Strings belong to the predictor. */
RESTR_API restr_status restr_predictor_info(const restr_predictor *predictor, const char **model_name, const char **mode,
                                            int64_t *image_size, int64_t *max_words, float *threshold);
/* The vocabulary without <pad> and <unk>: *n words, word i by restr_predictor_word (NULL for i >= n
 * or a NULL predictor, restr_last_error saying why). */
RESTR_API restr_status restr_predictor_vocab_size(const restr_predictor *predictor, size_t *n);
RESTR_API const char *restr_predictor_word(const restr_predictor *predictor, size_t i);

/* Encode an image once: RGB uint8, `height` rows of `width` pixels, rows `stride` bytes apart
 * (>= 3*width). Runs the export's preprocess and vision graphs. Free with restr_embedding_free. */
RESTR_API restr_status restr_embed(restr_predictor *predictor, const uint8_t *rgb, int64_t height, int64_t width,
                                   int64_t stride, restr_embedding **out);
RESTR_API void restr_embedding_free(restr_embedding *embedding);
RESTR_API restr_status restr_embedding_size(const restr_embedding *embedding, int64_t *height, int64_t *width);
/* The letterbox the preprocess graph chose: out[4] = {H, W, h, w} (photo size, resized size). */
RESTR_API restr_status restr_embedding_letterbox(const restr_embedding *embedding, int64_t out[4]);

/* Ask n expressions (UTF-8) about an embedded image; threshold < 0: the predictor's.
 * want_probs != 0 keeps the probabilities. Free *out with restr_result_free. An embedding made by
 * another export (or in another mode or precision) is RESTR_INVALID_ARGUMENT. */
RESTR_API restr_status restr_predict(restr_predictor *predictor, const restr_embedding *embedding, const char *const *texts,
                                     size_t n, float threshold, int want_probs, restr_result **out);
RESTR_API size_t restr_result_count(const restr_result *result);
RESTR_API restr_status restr_result_get(const restr_result *result, size_t i, restr_prediction *out);
/* The image's encoding (preprocess, vision) and this call's stages, totals over the expressions. */
RESTR_API restr_status restr_result_timings(const restr_result *result, restr_timings *out);
RESTR_API void restr_result_free(restr_result *result);

/* Text as the library reads and quotes it, for a host that speaks as restr-predict does (restr-predict-cpp:
 * output file names, messages, summary.json). *out is UTF-8 owned by the library, valid until this
 * thread's next restr_* call. `form` is a restr_text_form (another value: RESTR_INVALID_ARGUMENT). Invalid
 * UTF-8 is RESTR_TEXT_ERROR; with RESTR_TEXT_WORDS the message names expression `number` (1-based; 0: "expression"). */
typedef enum restr_text_form {
  RESTR_TEXT_WORDS = 0,      /* the words restr's tokenizer reads (restr.runtime.tokenizer.split_words), each ended by '\n' */
  RESTR_TEXT_REPR = 1,       /* Python's repr() of the string: quoted, unprintable characters escaped */
  RESTR_TEXT_NO_ACCENTS = 2, /* NFKD without its combining characters: "Café x²" -> "Cafe x2" */
  RESTR_TEXT_PATH = 3        /* as Python's str(pathlib.Path(text)): "export/" -> "export", "" -> "." */
} restr_text_form;
RESTR_API restr_status restr_text(const char *text, int form, size_t number, const char **out);

/* The words an export knows (its vocabulary without <pad> and <unk>), each ended by '\n': the manifest
 * and the vocabulary read and checked as restr_predictor_open checks them, no graph loaded
 * (restr-predict --list-words). *out as restr_text's. */
RESTR_API restr_status restr_export_words(const char *folder, const char **out);

#ifdef __cplusplus
}
#endif
#endif
