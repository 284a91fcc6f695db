// The C API's contract: bad input of every kind is a status and a one-line message (never a crash),
// and one predictor shared by 8 threads gives the serial results.
//   test_api EXPORT_DIR SCRATCH_DIR
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "artifacts.hpp"
#include "check.hpp"
#include "restr/restr_runtime.hpp"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

static std::string export_dir, scratch;

// `status` is `want` and the message is one non-empty line containing `part`.
static void expect(restr_status status, restr_status want, const std::string& part, int line) {
  const std::string msg = restr_last_error();
  if (status != want || msg.empty() || msg.find('\n') != std::string::npos || msg.find(part) == std::string::npos)
    check::fail(__FILE__, line, "status " + std::to_string(status) + " (want " + std::to_string(want) + "), message '" + msg + "' (want '" + part + "')");
}
#define EXPECT(call, want, part) expect((call), (want), (part), __LINE__)

static std::string copy_export(const std::string& name) {
  fs::path dst = fs::path(scratch) / name;
  fs::remove_all(dst);
  fs::copy(export_dir, dst);
  return dst;
}

static void write(const fs::path& p, const std::string& data) { std::ofstream(p, std::ios::binary) << data; }

static restr_status open(const std::string& folder, restr_predictor** p, const restr_options* o = nullptr) {
  return restr_predictor_open(folder.c_str(), o, p);
}

static void bad_folders() {
  restr_predictor* p = reinterpret_cast<restr_predictor*>(1);
  EXPECT(restr_predictor_open(nullptr, nullptr, &p), RESTR_INVALID_ARGUMENT, "folder is NULL");
  CHECK(p == nullptr);
  EXPECT(restr_predictor_open(export_dir.c_str(), nullptr, nullptr), RESTR_INVALID_ARGUMENT, "out is NULL");
  EXPECT(open(scratch + "/missing", &p), RESTR_ARTIFACT_ERROR, "no such folder");
  write(fs::path(scratch) / "file", "x");
  EXPECT(open(scratch + "/file", &p), RESTR_ARTIFACT_ERROR, "not a folder");
  EXPECT(open(scratch, &p), RESTR_ARTIFACT_ERROR, "no manifest.json");
  EXPECT(open("", &p), RESTR_INVALID_ARGUMENT, "folder is an empty string: give the path of an export folder");  // not ".: no manifest.json"

  std::string d = copy_export("tampered");
  write(fs::path(d) / "vision.onnx", check::read(d + "/vision.onnx") + "x");
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "does not match the manifest");

  d = copy_export("corrupt");  // garbage whose checksum the manifest states: ONNX Runtime refuses it
  json m = json::parse(check::read(d + "/manifest.json"));
  write(fs::path(d) / "vision.onnx", "not an onnx graph");
  m["graphs"]["vision"]["sha256"] = restr_impl::sha256_hex(check::read(d + "/vision.onnx"));
  write(fs::path(d) / "manifest.json", m.dump());
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "not a loadable ONNX graph");

  d = copy_export("badjson");
  write(fs::path(d) / "manifest.json", "{\"format_version\": 1,");
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "not a readable JSON manifest");
  d = copy_export("invalid");
  m = json::parse(check::read(d + "/manifest.json"));
  m["patch_size"] = 0;
  write(fs::path(d) / "manifest.json", m.dump());
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "manifest is invalid: patch_size: 0 is below the minimum 1");
  d = copy_export("novocab");
  fs::remove(fs::path(d) / "vocab.txt");
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "file named by the manifest is missing");
  d = copy_export("badvocab");
  write(fs::path(d) / "vocab.txt", check::read(d + "/vocab.txt") + "zebra\n");
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "vocab.txt: sha256");
  d = copy_export("nopre");
  m = json::parse(check::read(d + "/manifest.json"));
  m["graphs"].erase("preprocess");
  write(fs::path(d) / "manifest.json", m.dump());
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "no 'preprocess' graph");
  // a manifest edited to other sizes (consistent with itself, the graphs' checksums intact): the
  // graphs' own shapes disagree, refused when opened (as restr.runtime's OrtRunner), not misread later
  d = copy_export("resized");
  m = json::parse(check::read(d + "/manifest.json"));
  const int64_t s0 = m["image_size"], n0 = m["num_patches"], s1 = s0 + m["patch_size"].get<int64_t>(), n1 = (s1 / m["patch_size"].get<int64_t>()) * (s1 / m["patch_size"].get<int64_t>());
  m["image_size"] = s1;
  m["num_patches"] = n1;
  for (auto& g : m["graphs"])
    for (auto* list : {&g["inputs"], &g["outputs"]})
      for (auto& t : *list)
        for (auto& dim : t["shape"])
          if (dim == s0) dim = s1;
          else if (dim == n0) dim = n1;
  write(fs::path(d) / "manifest.json", m.dump());
  EXPECT(open(d, &p), RESTR_ARTIFACT_ERROR, "do not match the manifest");
  CHECK(p == nullptr);
}

static void bad_options() {
  restr_predictor* p = nullptr;
  restr_options o;
  restr_options_init(&o);
  o.provider = "tpu";
  EXPECT(open(export_dir, &p, &o), RESTR_INVALID_ARGUMENT, "provider must be cpu or cuda");
  restr_options_init(&o);
  o.precision = "int4";
  EXPECT(open(export_dir, &p, &o), RESTR_INVALID_ARGUMENT, "precision must be fp32, fp16 or int8");
  restr_options_init(&o);
  o.precision = "int8";  // a precision this export lacks: the missing graph named, as restr.runtime does
  EXPECT(open(export_dir, &p, &o), RESTR_ARTIFACT_ERROR, "the export has no 'vision_int8' graph");
  restr_options_init(&o);
  o.threshold = 1.5f;
  EXPECT(open(export_dir, &p, &o), RESTR_INVALID_ARGUMENT, "threshold must be between 0 and 1");
  restr_options_init(&o);
  o.threads = -1;
  EXPECT(open(export_dir, &p, &o), RESTR_INVALID_ARGUMENT, "threads must be >= 0");
  restr_options_init(&o);
  o.provider = "cuda";
  o.device_id = -1;  // a bad option, not "CUDA unavailable" (nor ONNX Runtime's own words)
  EXPECT(open(export_dir, &p, &o), RESTR_INVALID_ARGUMENT, "device_id must be >= 0");
  restr_options_init(&o);
  o.precision = "fp16";  // the test export has FP32 graphs only
  EXPECT(open(export_dir, &p, &o), RESTR_ARTIFACT_ERROR, "no 'vision_fp16' graph");
  // CUDA through the C API's CUDA_V2 call: a clear runtime error with the CPU wheel's library (in
  // restr.runtime's words) or with a GPU build that finds no CUDA libraries or GPU.
  restr_options_init(&o);
  o.provider = "cuda";
  restr_status s = open(export_dir, &p, &o);
  if (s == RESTR_OK) {
    restr_predictor_free(p);  // a GPU build of ONNX Runtime with a GPU
  } else {
    const std::string m = restr_last_error();
    EXPECT(s, RESTR_RUNTIME_ERROR, m.find("unavailable: ") != std::string::npos ? "CUDA execution provider unavailable: "
                                                                                : "CUDAExecutionProvider is not available in this onnxruntime build (has: ");
  }
}

static void bad_calls(restr_predictor* p) {
  std::vector<uint8_t> rgb(64 * 48 * 3, 100);
  restr_embedding* e = nullptr;
  EXPECT(restr_embed(nullptr, rgb.data(), 48, 64, 192, &e), RESTR_INVALID_ARGUMENT, "predictor is NULL");
  EXPECT(restr_embed(p, nullptr, 48, 64, 192, &e), RESTR_INVALID_ARGUMENT, "rgb is NULL");
  EXPECT(restr_embed(p, rgb.data(), 48, 64, 192, nullptr), RESTR_INVALID_ARGUMENT, "out is NULL");
  EXPECT(restr_embed(p, rgb.data(), 0, 64, 192, &e), RESTR_IMAGE_ERROR, "zero size");
  EXPECT(restr_embed(p, rgb.data(), 48, 0, 192, &e), RESTR_IMAGE_ERROR, "image has zero size (0x48)");
  EXPECT(restr_embed(p, rgb.data(), -5, 100, 300, &e), RESTR_IMAGE_ERROR, "image height is negative (-5)");  // not "zero size (100x-5)"
  EXPECT(restr_embed(p, rgb.data(), 48, -1, 192, &e), RESTR_IMAGE_ERROR, "image width is negative (-1)");
  EXPECT(restr_embed(p, rgb.data(), 100000, 100000, 300000, &e), RESTR_IMAGE_ERROR, "larger than the 64,000,000 allowed");
  EXPECT(restr_embed(p, rgb.data(), INT64_MAX, INT64_MAX, INT64_MAX, &e), RESTR_IMAGE_ERROR, "larger than");
  EXPECT(restr_embed(p, rgb.data(), 48, 64, 100, &e), RESTR_IMAGE_ERROR, "row stride 100 is below");
  // a stride whose rows cannot all be addressed (height * stride overflows): refused, not read
  EXPECT(restr_embed(p, rgb.data(), 48, 64, INT64_MAX / 2, &e), RESTR_IMAGE_ERROR, "row stride");
  CHECK(e == nullptr);

  CHECK(restr_embed(p, rgb.data(), 48, 64, 192, &e) == RESTR_OK);
  const char* ok[] = {"the dog"};
  restr_result* r = nullptr;
  EXPECT(restr_predict(nullptr, e, ok, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, "predictor is NULL");
  EXPECT(restr_predict(p, nullptr, ok, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, "embedding is NULL");
  EXPECT(restr_predict(p, e, nullptr, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, "texts is NULL");
  EXPECT(restr_predict(p, e, ok, 0, -1, 0, &r), RESTR_TEXT_ERROR, "no expression given");
  const char* with_null[] = {"the dog", nullptr};
  EXPECT(restr_predict(p, e, with_null, 2, -1, 0, &r), RESTR_INVALID_ARGUMENT, "texts[1] is NULL");
  const char* empty[] = {"the dog", ""};
  EXPECT(restr_predict(p, e, empty, 2, -1, 0, &r), RESTR_TEXT_ERROR, "expression 2 ('') is empty");
  const char* dots[] = {" .. !? "};
  EXPECT(restr_predict(p, e, dots, 1, -1, 0, &r), RESTR_TEXT_ERROR, "is empty: it has no words");
  const char* utf8[] = {"the dog", "the \xff dog"};
  EXPECT(restr_predict(p, e, utf8, 2, -1, 0, &r), RESTR_TEXT_ERROR, "expression 2 is not valid UTF-8");
  std::vector<const char*> many(257, "the dog");
  EXPECT(restr_predict(p, e, many.data(), many.size(), -1, 0, &r), RESTR_TEXT_ERROR, "257 expressions in one call; at most 256");
  // a huge n (a caller's size bug) is refused before texts[1..] are read
  EXPECT(restr_predict(p, e, ok, size_t(1) << 40, -1, 0, &r), RESTR_TEXT_ERROR, "1099511627776 expressions in one call");
  EXPECT(restr_predict(p, e, ok, 1, 1.5f, 0, &r), RESTR_INVALID_ARGUMENT, "threshold must be between 0 and 1");
  EXPECT(restr_predict(p, e, ok, 1, std::nanf(""), 0, &r), RESTR_INVALID_ARGUMENT, "threshold must be between 0 and 1");
  CHECK(r == nullptr);

  std::string longest;
  for (int i = 0; i < 5000; ++i) longest += "dog ";
  const char* overlong[] = {longest.c_str()};
  CHECK(restr_predict(p, e, overlong, 1, -1, 1, &r) == RESTR_OK);
  restr_prediction pr;
  CHECK(restr_result_get(r, 0, &pr) == RESTR_OK);
  CHECK(pr.truncated == 1 && pr.probs != nullptr && pr.height == 48 && pr.width == 64);
  EXPECT(restr_result_get(r, 1, &pr), RESTR_INVALID_ARGUMENT, "out of range");
  EXPECT(restr_result_get(nullptr, 0, &pr), RESTR_INVALID_ARGUMENT, "result is NULL");
  EXPECT(restr_result_get(r, 0, nullptr), RESTR_INVALID_ARGUMENT, "out is NULL");
  CHECK(restr_result_count(nullptr) == 0);
  size_t words = 0;
  CHECK(restr_predictor_vocab_size(p, &words) == RESTR_OK && words > 0);
  CHECK(restr_predictor_word(p, 100000) == nullptr);  // out of range: NULL, and the last error says why
  CHECK_EQ(std::string(restr_last_error()), "word index 100000 is out of range (the vocabulary has " + std::to_string(words) + " words)");
  CHECK(restr_predictor_word(p, SIZE_MAX - 1) == nullptr);  // i + 2 wrapped around to "<pad>"
  CHECK(restr_predictor_word(nullptr, 0) == nullptr && std::string(restr_last_error()) == "predictor is NULL");
  CHECK(restr_predictor_word(p, words - 1) != nullptr && std::string(restr_last_error()).empty());
  restr_result_free(r);
  restr_embedding_free(e);
  restr_result_free(nullptr);
  restr_embedding_free(nullptr);
  restr_predictor_free(nullptr);
  CHECK(restr_predict(p, e = nullptr, ok, 1, -1, 0, &r) == RESTR_INVALID_ARGUMENT);
  CHECK(std::string(restr_version()) == RESTR_TEST_VERSION);

  try {  // the C++ wrapper: the same status and message as an exception
    restr::Predictor missing(scratch + "/missing");
    CHECK(false);
  } catch (const restr::Error& err) {
    CHECK(err.status() == RESTR_ARTIFACT_ERROR && std::string(err.what()).find("no such folder") != std::string::npos);
  }
}

// Text as the library reads and quotes it, and an export's words without its graphs: what
// restr-predict-cpp needs beyond the predictor, through the public API.
static void text(const restr::Predictor& p) {
  using V = std::vector<std::string>;
  CHECK(restr::split_words("The dog, left of the bench.") == (V{"the", "dog", "left", "of", "the", "bench"}));
  CHECK(restr::split_words(" ,;. ").empty());
  CHECK_EQ(restr::text("it's", RESTR_TEXT_REPR), std::string("\"it's\""));
  CHECK_EQ(restr::text("a\tb", RESTR_TEXT_REPR), std::string("'a\\tb'"));
  CHECK_EQ(restr::text("Caf\xc3\xa9 x\xc2\xb2", RESTR_TEXT_NO_ACCENTS), std::string("Cafe x2"));
  CHECK_EQ(restr::text("./export//", RESTR_TEXT_PATH), std::string("export"));
  CHECK_EQ(restr::text("", RESTR_TEXT_PATH), std::string("."));
  const char* out = nullptr;
  EXPECT(restr_text("a\xff", RESTR_TEXT_WORDS, 2, &out), RESTR_TEXT_ERROR, "expression 2 is not valid UTF-8");
  CHECK(out == nullptr);
  EXPECT(restr_text("a", 9, 0, &out), RESTR_INVALID_ARGUMENT, "no form 9");
  EXPECT(restr_text(nullptr, RESTR_TEXT_REPR, 0, &out), RESTR_INVALID_ARGUMENT, "text is NULL");
  CHECK(restr::export_words(export_dir) == p.words());
  EXPECT(restr_export_words((scratch + "/missing").c_str(), &out), RESTR_ARTIFACT_ERROR, "no such folder");
  EXPECT(restr_export_words(export_dir.c_str(), nullptr), RESTR_INVALID_ARGUMENT, "out is NULL");
}

// An embedding carries the export that made it (the manifest's sha256 of the graph that took the
// image): another export's, of the same architecture and shapes, would give wrong masks with
// RESTR_OK; it is refused in one line, as is one of another mode. A second predictor of the same
// export takes it.
static void foreign_embedding(const restr::Predictor& split) {
  std::string d = copy_export("e2e");
  json m = json::parse(check::read(d + "/manifest.json"));
  for (const char* g : {"vision", "language", "fusion_decoder"}) m["graphs"].erase(g);
  write(fs::path(d) / "manifest.json", m.dump());
  restr::Predictor e2e(d);
  CHECK(e2e.mode() == "end_to_end");
  // the same graphs but for the vision graph's doc_string (ModelProto field 6, appended: the last wins)
  std::string other = copy_export("other");
  m = json::parse(check::read(other + "/manifest.json"));
  const std::string vision = check::read(other + "/vision.onnx") + std::string("\x32\x05other", 7);
  write(fs::path(other) / "vision.onnx", vision);
  m["graphs"]["vision"]["sha256"] = restr_impl::sha256_hex(vision);
  write(fs::path(other) / "manifest.json", m.dump());
  restr::Predictor theirs(other), same(export_dir);
  std::vector<uint8_t> rgb(30 * 40 * 3, 120);
  restr::Embedding features = split.embed(rgb.data(), 30, 40), image = e2e.embed(rgb.data(), 30, 40), foreign = theirs.embed(rgb.data(), 30, 40);
  const char* ok[] = {"the dog"};
  restr_result* r = nullptr;
  const std::string want = "this image embedding was made by another export (its vision graph has sha256 " +
                           m["graphs"]["vision"]["sha256"].get<std::string>().substr(0, 12) + "..., this predictor's " +
                           json::parse(check::read(export_dir + "/manifest.json"))["graphs"]["vision"]["sha256"].get<std::string>().substr(0, 12) +
                           "...): embed the image again with this predictor";
  EXPECT(restr_predict(split.get(), foreign.get(), ok, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, want);
  CHECK_EQ(std::string(restr_last_error()), want);
  EXPECT(restr_predict(e2e.get(), features.get(), ok, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, "made by another export (its vision graph");
  EXPECT(restr_predict(split.get(), image.get(), ok, 1, -1, 0, &r), RESTR_INVALID_ARGUMENT, "made by another export (its end_to_end graph");
  CHECK(r == nullptr);
  try {  // the C++ wrapper throws it
    theirs.predict(features, {"the dog"});
    CHECK(false);
  } catch (const restr::Error& err) {
    CHECK(err.status() == RESTR_INVALID_ARGUMENT && std::string(err.what()).find("made by another export") != std::string::npos);
  }
  CHECK(same.predict(features, {"the dog"}).size() == 1);
}

// A row stride with padding gives what the packed rows give.
static void stride(const restr::Predictor& p) {
  const int h = 37, w = 51, pad = 13;
  std::vector<uint8_t> packed(size_t(h * w * 3)), padded(size_t(h * (w * 3 + pad)), 7);
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = uint8_t(i * 31 % 251);
  for (int y = 0; y < h; ++y) std::copy_n(packed.data() + y * w * 3, w * 3, padded.data() + y * (w * 3 + pad));
  restr::Result a = p.predict(p.embed(packed.data(), h, w), {"the red car"}, -1, true);
  restr::Result b = p.predict(p.embed(padded.data(), h, w, w * 3 + pad), {"the red car"}, -1, true);
  CHECK(std::memcmp(a[0].probs, b[0].probs, sizeof(float) * h * w) == 0);
}

struct Answer {
  std::vector<uint8_t> masks;
  std::vector<float> probs, scores;
};

static Answer ask(const restr::Predictor& p, int job) {
  const int h = 20 + job * 7, w = 90 - job * 5;
  std::vector<uint8_t> rgb(size_t(h * w * 3));
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * (job + 3)) % 256);
  std::vector<std::string> texts = {"the dog", "the red car on the left", "big tree", "the man in the blue shirt", "ball", "small cat"};
  restr::Result r = p.predict(p.embed(rgb.data(), h, w), texts, -1, true);
  Answer a;
  for (size_t i = 0; i < r.size(); ++i) {
    restr::Prediction x = r[i];
    a.masks.insert(a.masks.end(), x.mask, x.mask + h * w);
    a.probs.insert(a.probs.end(), x.probs, x.probs + h * w);
    a.scores.push_back(x.score);
  }
  return a;
}

// One predictor shared by 8 threads, each asking about its own image several times.
static void threads(const restr::Predictor& p) {
  const int jobs = 8, rounds = 4;
  std::vector<Answer> serial;
  for (int j = 0; j < jobs; ++j) serial.push_back(ask(p, j));
  std::vector<int> mismatches(jobs, 0);
  std::vector<std::thread> pool;
  for (int j = 0; j < jobs; ++j)
    pool.emplace_back([&, j] {
      for (int r = 0; r < rounds; ++r) {
        Answer a = ask(p, j);
        mismatches[j] += a.masks != serial[j].masks || a.probs != serial[j].probs || a.scores != serial[j].scores;
      }
    });
  for (auto& t : pool) t.join();
  for (int j = 0; j < jobs; ++j) CHECK_EQ(mismatches[j], 0);
}

int main(int argc, char** argv) {
  if (argc < 3) return std::fprintf(stderr, "usage: test_api EXPORT_DIR SCRATCH_DIR\n"), 2;
  export_dir = argv[1];
  scratch = argv[2];
  fs::remove_all(scratch);
  fs::create_directories(scratch);
  bad_folders();
  bad_options();
  restr::Options o;
  o.threads = 1;
  restr::Predictor p(export_dir, o);
  bad_calls(p.get());
  stride(p);
  text(p);
  foreign_embedding(p);
  threads(p);
  return check::finish("test_api");
}
