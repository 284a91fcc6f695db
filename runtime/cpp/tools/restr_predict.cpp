// restr-predict-cpp: restr-predict's arguments and outputs (mask PNGs, overlays, summary.json with
// the same keys) from the C++ host. Everything is computed before anything is written; files go
// to a staging folder inside --out and are moved into place (staging.hpp: signals, stale folders).
// Failures are one line on stderr: exit code 2 for bad input and runtime failures, 3 for an
// internal error.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <nlohmann/json.hpp>
#include <restr/restr_runtime.hpp>

#include "decode/decode.hpp"
#include "image.hpp"
#include "sheet.hpp"
#include "staging.hpp"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

const char* const kProg = "restr-predict-cpp";

// Text as restr-predict quotes it (the library's restr_text): Python's repr() and str(Path(...)).
std::string py_repr(const std::string& text) { return restr::text(text, RESTR_TEXT_REPR); }
std::string py_path(const std::string& path) { return restr::text(path, RESTR_TEXT_PATH); }
constexpr int kBadInput = 2, kInternal = 3;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* const kHelp = R"(usage: restr-predict-cpp --artifacts DIR --image PATH --text "..." [--text ...] --out DIR [options]

Segment the object each --text refers to in --image with a restr export (the C++ host of restr-predict).

  --artifacts DIR     export folder written by restr-export (holds manifest.json)
  --image PATH        image file (JPEG, PNG, WebP, TIFF, BMP, GIF, TGA, PBM/PGM/PPM)
  --text TEXT         referring expression; repeat for several (batched against one image encoding)
  --out DIR           output folder for the mask PNGs and summary.json (must be empty unless --force)
  --overlay           also write <k>_<slug>_overlay.png
  --sheet             also write sheet.png: every expression's overlay side by side, captioned
  --force             write into a folder holding a previous run's outputs (they are replaced)
  --list-words        print the words the model knows, one a line, and exit
  --backend ort       ONNX Runtime (the only backend of the C++ host)
  --precision P       fp32 (default), fp16 or int8 (the calibrated INT8 graphs)
  --providers LIST    ONNX Runtime providers, comma-separated: cuda, cpu, or auto (cuda when this
                      ONNX Runtime has it) (default: cpu); without CUDA, cuda warns and runs on the
                      CPU, as restr-predict does; tensorrt is skipped with a warning (use restr-predict)
  --threads N         ONNX Runtime intra-op threads (default: one per core)
  --threshold X       mask threshold in (0, 1) (default: the manifest's)
  --json FILE         also write the summary to FILE ('-' for stdout, which replaces the table)

Exit codes: 0 done; 2 bad input, or the runtime failed; 3 internal error (a bug).
)";

struct Args {
  std::string artifacts, image, out, precision = "fp32", providers = "cpu", backend = "ort", json_path;
  std::vector<std::string> texts;
  bool overlay = false, sheet = false, force = false, list_words = false, has_json = false;
  int threads = 0;
  float threshold = -1.0f;
  double threshold_text = -1.0;  // --threshold as given (the summary states it)
};

double number(const std::string& opt, const std::string& v) {
  try {
    size_t used = 0;
    double d = std::stod(v, &used);
    if (used == v.size()) return d;
  } catch (const std::exception&) {
  }
  throw UsageError("Invalid value for '" + opt + "': '" + v + "' is not a number");
}

// difflib.SequenceMatcher(None, a, b).ratio(): twice the characters of the matching blocks (the
// longest block first, the earliest on a tie, then the same on each side of it) over both lengths.
double similarity(const std::string& a, const std::string& b) {
  size_t matches = 0;
  std::vector<std::array<size_t, 4>> todo = {{0, a.size(), 0, b.size()}};  // a[alo:ahi] against b[blo:bhi]
  while (!todo.empty()) {
    const auto [alo, ahi, blo, bhi] = todo.back();
    todo.pop_back();
    size_t bi = alo, bj = blo, bk = 0;
    for (size_t i = alo; i < ahi; ++i)
      for (size_t j = blo; j < bhi; ++j) {
        size_t k = 0;
        while (i + k < ahi && j + k < bhi && a[i + k] == b[j + k]) ++k;
        if (k > bk) bi = i, bj = j, bk = k;
      }
    if (!bk) continue;
    matches += bk;
    todo.push_back({alo, bi, blo, bj});
    todo.push_back({bi + bk, ahi, bj + bk, bhi});
  }
  return a.size() + b.size() ? 2.0 * double(matches) / double(a.size() + b.size()) : 1.0;
}

// click's words for an unknown option, as restr-predict prints them: the options difflib's
// get_close_matches finds (at most 3 of ratio >= 0.6, the closest), in alphabetical order.
std::string no_such_option(const std::string& opt, const std::vector<std::string>& options) {
  std::vector<std::pair<double, std::string>> close;
  for (const auto& o : options)
    if (2.0 * double(std::min(o.size(), opt.size())) / double(o.size() + opt.size()) >= 0.6)  // difflib's quick bound: skip a long typo fast
      if (const double r = similarity(o, opt); r >= 0.6) close.emplace_back(r, o);
  std::sort(close.rbegin(), close.rend());
  close.resize(std::min<size_t>(close.size(), 3));
  std::vector<std::string> names;
  for (const auto& c : close) names.push_back("'" + c.second + "'");
  std::sort(names.begin(), names.end());
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  const std::string head = "No such option '" + opt + "'";
  return names.empty() ? head : names.size() == 1 ? head + "; did you mean " + list + "?" : head + ". (did you mean one of: " + list + "?)";
}

Args parse_options(int argc, char** argv) {
  Args a;
  const std::map<std::string, std::string*> strings = {{"--artifacts", &a.artifacts}, {"--image", &a.image},         {"--out", &a.out},
                                                       {"--precision", &a.precision}, {"--providers", &a.providers}, {"--backend", &a.backend}};
  const std::map<std::string, bool*> flags = {{"--overlay", &a.overlay}, {"--sheet", &a.sheet}, {"--force", &a.force}, {"--list-words", &a.list_words}};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool inline_value = false;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    if (arg == "-h" || arg == "--help") {
      std::cout << kHelp;
      std::exit(0);
    }
    if (flags.count(arg)) {
      if (inline_value) throw UsageError("Option '" + arg + "' does not take a value");
      *flags.at(arg) = true;
      continue;
    }
    const std::vector<std::string> valued = {"--text", "--threads", "--threshold", "--json"};
    if (!strings.count(arg) && std::find(valued.begin(), valued.end(), arg) == valued.end()) {
      std::vector<std::string> options = valued;
      if (arg.rfind("--", 0) == 0) {  // click suggests long options for a long one
        for (const auto& o : strings) options.push_back(o.first);
        for (const auto& o : flags) options.push_back(o.first);
        options.push_back("--help");
      } else {
        options.clear();
      }
      throw UsageError(no_such_option(arg, options));
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError("Option '" + arg + "' requires an argument");
      value = argv[++i];
    }
    if (strings.count(arg)) *strings.at(arg) = value;
    else if (arg == "--text") a.texts.push_back(value);
    else if (arg == "--json") a.json_path = value, a.has_json = true;
    else if (arg == "--threads") {
      double t = number(arg, value);
      if (!(t >= 0 && t <= 1024) || t != std::floor(t)) throw UsageError("Invalid value for '--threads': " + value + " is not a whole number from 0 to 1024");
      a.threads = int(t);
    } else {
      double t = number(arg, value);
      if (!(t > 0 && t < 1)) throw UsageError("Invalid value for '--threshold': " + value + " is not in the range 0<x<1");
      a.threshold = float(t);
      a.threshold_text = t;
    }
  }
  if (a.precision != "fp32" && a.precision != "fp16" && a.precision != "int8")  // click.Choice(PRECISIONS) in restr-predict
    throw UsageError("Invalid value for '--precision': '" + a.precision + "' is not one of 'fp32', 'fp16', 'int8'");
  return a;
}

// The arguments; what click refuses in restr-predict reads as its message there, "(see --help)" after it.
Args parse(int argc, char** argv) {
  Args a;
  try {
    a = parse_options(argc, argv);
  } catch (const UsageError& e) {
    throw UsageError(e.what() + std::string(" (see --help)"));
  }
  if (a.backend != "ort") throw UsageError("--backend " + a.backend + ": the C++ host runs ONNX Runtime only (use restr-predict for TensorRT engines)");
  return a;
}

// 'The dog, left!' -> 'the-dog-left', 'Café naïve' -> 'cafe-naive' (restr.runtime.cli.slugify): the
// words, accents dropped from their letters, ASCII letters, digits, _ and - kept, no double dash.
std::string slugify(const std::string& text) {
  std::string joined, slug;
  for (const auto& w : restr::split_words(text)) joined += (joined.empty() ? "" : "-") + w;
  for (unsigned char c : restr::text(joined, RESTR_TEXT_NO_ACCENTS))
    if (c < 0x80 && (std::isalnum(c) || c == '_' || c == '-') && !(c == '-' && !slug.empty() && slug.back() == '-')) slug += char(std::tolower(c));
  slug = slug.substr(0, 40);
  size_t first = slug.find_first_not_of('-'), last = slug.find_last_not_of('-');
  return first == std::string::npos ? "expression" : slug.substr(first, last - first + 1);
}

// The shortest decimal that reads back as `f` (0.5, not 0.5000000xx): the value Python shows.
double shortest(float f) {
  for (int digits = 6; digits < 9; ++digits) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*g", digits, double(f));
    if (std::strtof(buf, nullptr) == f) return std::strtod(buf, nullptr);
  }
  return double(f);
}

// summary.json's text. A path is bytes on Linux and need not be UTF-8 (restr-predict writes such
// bytes as \udcXX escapes): invalid UTF-8 becomes U+FFFD instead of an exception (exit 3).
std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

double round6(double x) { return std::nearbyint(x * 1e6) / 1e6; }
double round3(double x) { return std::nearbyint(x * 1e3) / 1e3; }

// The nearest folder of `path` that exists, as restr.runtime.cli_common._nearest_existing: absolute, then
// its parents (by name) until one exists.
fs::path nearest_existing(const std::string& path) {
  fs::path p = py_path(fs::absolute(path).string());
  while (!fs::exists(p) && p != p.parent_path()) p = p.parent_path();
  return p;
}

// restr.runtime.cli_common._probe_folder: a file created and removed in `folder`, the only test that also
// holds for root, /proc and read-only mounts; `what` names the option ("--out DIR").
void probe_folder(const fs::path& folder, const std::string& what) {
  if (!fs::is_directory(folder)) throw UsageError(what + ": " + folder.string() + " is not a folder");
  std::string name = (folder / ".restr-probe-XXXXXX").string();
  const int fd = mkstemp(name.data());
  if (fd < 0) {  // /proc, /sys and the like answer ENOENT for a new file in a folder that exists
    const std::string why = errno == ENOENT ? "the file system there takes no new files" : std::strerror(errno);
    throw UsageError(what + ": cannot write in " + folder.string() + " (" + why + ")");
  }
  close(fd);
  unlink(name.c_str());
}

// restr.runtime.cli.check_not_url: a URL given as a file (one that is no file) is named as one, as typed.
void check_not_url(const std::string& value, const std::string& option) {
  const size_t colon = value.find(':');
  bool url = !value.empty() && std::isalpha(static_cast<unsigned char>(value[0])) && colon != std::string::npos && value.compare(colon, 2, ":/") == 0;
  for (size_t i = 1; url && i < colon; ++i)
    url = std::isalnum(static_cast<unsigned char>(value[i])) || value[i] == '+' || value[i] == '.' || value[i] == '-';
  if (!url || fs::exists(value)) return;
  std::string shown = py_path(value);  // restr-predict shows its Path with the scheme's // put back
  if (const size_t c = shown.find(':'); c != std::string::npos && shown.compare(c, 2, ":/") == 0 && shown.compare(c, 3, "://") != 0) shown.insert(c + 1, "/");
  throw UsageError(option + " " + shown + ": looks like a URL; restr-predict reads local files only (download it first)");
}

void check_outputs(const Args& a) {
  const std::string shown = py_path(a.out);  // as restr-predict's Path reads and prints it ("out/" is "out")
  const fs::path out(shown);
  if (fs::exists(out) && !fs::is_directory(out)) throw UsageError(shown + ": exists and is not a folder");
  probe_folder(nearest_existing(a.out), "--out " + shown);
  if (fs::is_directory(out)) restr_cli::remove_stale_staging(out);  // a dead run's are no files; a live run's are
  if (fs::is_directory(out) && !fs::is_empty(out) && !a.force)
    throw UsageError("--out " + shown + ": the folder holds files (a previous run's?); pass --force to replace restr-predict's outputs there, or choose another folder");
  if (a.has_json && a.json_path != "-") {  // as restr-predict: not a folder; its folder may be made later
    const std::string json_shown = py_path(a.json_path);
    if (fs::is_directory(a.json_path)) throw UsageError("--json " + json_shown + ": is a folder, expected a file name");
    const fs::path parent = fs::path(json_shown).parent_path();
    probe_folder(nearest_existing(parent.empty() ? "." : parent.string()), "--json " + json_shown);
  }
}

// `text` into `path`, checked: a full disk or an unwritable path is an error (exit 2), not a silent
// exit 0 with a missing or truncated file.
void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw restr_cli::FileError(path.string() + ": cannot be written");
}

// --json FILE as restr-predict writes it: its folder created, the file replaced whole (a temporary beside it, renamed).
void write_json_file(const fs::path& path, const std::string& text) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(getpid());
  restr_cli::Cleanup cleanup({tmp}, {});  // a fatal signal removes it (renamed, it is no longer there)
  try {
    write_text(tmp, text);
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

// The files a previous run listed in out/summary.json (and that summary): nothing else.
void remove_previous(const fs::path& out) {
  std::ifstream f(out / "summary.json");
  if (!f) return;
  json s = json::parse(f, nullptr, false);
  if (s.is_discarded() || !s.is_object()) return;
  fs::remove(out / "summary.json");
  std::vector<json> names = {s.value("sheet", json())};
  for (const auto& e : s.value("expressions", json::array()))
    if (e.is_object()) names.push_back(e.value("mask", json())), names.push_back(e.value("overlay", json()));
  for (const auto& n : names)
    if (n.is_string() && !n.get<std::string>().empty() && fs::path(n.get<std::string>()).filename() == n.get<std::string>())
      fs::remove(out / n.get<std::string>());
}

// Code points of UTF-8 text: Python's len(), for the table's widths.
size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The first n code points of UTF-8 text.
std::string first_code_points(const std::string& s, size_t n) {
  size_t i = 0;
  for (size_t seen = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 && seen++ == n) break;
  return s.substr(0, i);
}

// 1234567 -> "1,234,567" (Python's format spec ",").
std::string thousands(long long v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (v < 0 ? "-" : "") + out;
}

// restr-predict's table (runtime/cli.py, _print_table), line for line.
void print_table(const json& summary, const std::string& out_arg) {
  auto in_out = [&](const std::string& name) { return py_path(out_arg + "/" + name); };  // str(out / name)
  const json& img = summary["image"];
  const json& exprs = summary["expressions"];
  std::printf("%s (%s, %s) on %s (%lldx%lld), threshold %g\n", summary["model"].get<std::string>().c_str(),
              summary["backend"].get<std::string>().c_str(), summary["mode"].get<std::string>().c_str(),
              img["path"].get<std::string>().c_str(), (long long)img["width"].get<int64_t>(), (long long)img["height"].get<int64_t>(),
              summary["threshold"].get<double>());
  size_t width = 10;
  for (const auto& e : exprs) width = std::max(width, code_points(e["text"].get<std::string>()));
  width = std::min<size_t>(48, width);
  auto pad = [](const std::string& s, size_t w) { return s + std::string(w > code_points(s) ? w - code_points(s) : 0, ' '); };
  std::printf("%3s  %s  %10s  %6s  %5s  mask\n", "#", pad("expression", width).c_str(), "area px", "area", "score");
  for (const auto& e : exprs) {
    std::string text = e["text"].get<std::string>();
    if (code_points(text) > width) text = first_code_points(text, width - 3) + "...";
    std::printf("%3d  %s  %10s  %5.1f%%  %5.2f  %s%s\n", e["index"].get<int>(), pad(text, width).c_str(),
                thousands(e["area"].get<int64_t>()).c_str(), 100 * e["area_fraction"].get<double>(), e["score"].get<double>(),
                in_out(e["mask"].get<std::string>()).c_str(), e["no_known_words"].get<bool>() ? "  (no known words: a guess)" : "");
  }
  std::printf("score: mean probability inside the mask, how sure the model is of the pixels it chose (not whether it chose the right object)\n");
  const json& t = summary["timings_ms"];
  std::printf("timings (ms): load %.1f, preprocess %.1f, vision %.1f, language+fusion %.1f per expression, postprocess %.1f per expression\n",
              t["load"].get<double>(), t["preprocess"].get<double>(), t["vision"].get<double>(),
              t["language_fusion_per_expression"].get<double>(), t["postprocess_per_expression"].get<double>());
  std::printf("wrote %s\n", in_out("summary.json").c_str());
}

// restr-predict's --providers (restr.runtime.runners.choose_providers): "auto", or names and aliases
// separated by commas, where any GPU provider named goes before the CPU. The C++ host runs CUDA or the CPU.
struct Providers {
  std::string provider = "cpu";  // what the predictor is opened with
  bool cuda_named = false;       // warn when CUDA is missing (not for auto)
  std::vector<std::string> skipped;  // named, but never run by this host
};

Providers parse_providers(const std::string& arg) {
  static const std::vector<std::pair<std::string, std::string>> aliases = {
      {"tensorrt", "TensorrtExecutionProvider"}, {"cuda", "CUDAExecutionProvider"}, {"cpu", "CPUExecutionProvider"}};
  auto trim = [](const std::string& s) {
    const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  Providers p;
  if (lower(trim(arg)) == "auto") {
    p.provider = "cuda";
    return p;
  }
  std::stringstream items(arg);
  for (std::string item; std::getline(items, item, ',');) {
    const std::string r = trim(item);
    if (r.empty()) continue;
    std::string name = r;
    for (const auto& [alias, full] : aliases)
      if (lower(r) == alias) name = full;
    if (name == "CUDAExecutionProvider") {
      p.provider = "cuda";
      p.cuda_named = true;
    } else if (name == "TensorrtExecutionProvider") {
      if (std::find(p.skipped.begin(), p.skipped.end(), name) == p.skipped.end()) p.skipped.push_back(name);
    } else if (name != "CPUExecutionProvider") {
      throw UsageError("unknown ONNX Runtime provider " + py_repr(r) + " (use tensorrt, cuda, cpu or auto)");
    }
  }
  return p;
}

// The predictor and the provider it got ("auto": CUDA where this ONNX Runtime has it, else the CPU).
restr::Predictor open(const Args& a, std::string* provider = nullptr) {
  const Providers asked = parse_providers(a.providers);
  for (const auto& name : asked.skipped)
    std::cerr << "warning: " << name << " is not run by the C++ host (it runs CUDAExecutionProvider and CPUExecutionProvider); skipped\n";
  restr::Options o;
  o.precision = a.precision;
  o.threads = a.threads;
  o.threshold = a.threshold;
  o.provider = asked.provider;
  if (provider) *provider = o.provider;
  try {
    return restr::Predictor(a.artifacts, o);
  } catch (const restr::Error& e) {
    // as restr-predict: without CUDA, the CPU (a warning when CUDA was asked for by name)
    if (o.provider != "cuda" || e.status() != RESTR_RUNTIME_ERROR) throw;
    if (provider) *provider = "cpu";
    o.provider = "cpu";
    restr::Predictor cpu(a.artifacts, o);  // its own error if the CPU fails too (an ONNX Runtime too old)
    if (asked.cuda_named) std::cerr << "warning: " << e.what() << "; skipped\n";
    return cpu;
  }
}

int run(const Args& a) {
  auto t_start = std::chrono::steady_clock::now();
  auto ms = [](auto t0) { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  if (a.artifacts.empty()) throw UsageError("give --artifacts DIR");
  if (a.list_words) {  // the manifest and the vocabulary (checked), no graph loaded: as restr-predict
    for (const auto& word : restr::export_words(a.artifacts)) std::cout << word << "\n";
    return 0;
  }
  std::vector<std::string> missing;
  if (a.image.empty()) missing.push_back("'--image'");
  if (a.texts.empty()) missing.push_back("'--text'");
  if (a.out.empty()) missing.push_back("'--out'");
  if (!missing.empty()) {
    std::string m;
    for (const auto& x : missing) m += (m.empty() ? "" : ", ") + x;
    throw UsageError("Missing option" + std::string(missing.size() > 1 ? "s " : " ") + m + " (or give --list-words)");
  }
  check_not_url(a.image, "--image");
  check_outputs(a);
  for (size_t i = 0; i < a.texts.size(); ++i)  // before any work, as restr-predict
    if (restr::split_words(a.texts[i], i + 1).empty())
      throw UsageError("expression " + std::to_string(i + 1) + " (" + py_repr(a.texts[i]) + ") is empty: it has no words");
  auto t0 = std::chrono::steady_clock::now();
  std::string provider;
  restr::Predictor predictor = open(a, &provider);
  const double load_ms = ms(t0);
  t0 = std::chrono::steady_clock::now();
  restr_cli::Image image = restr_cli::decode::read_rgb(a.image);
  const double decode_ms = ms(t0);
  restr::Embedding emb = predictor.embed(image.rgb.data(), image.height, image.width);
  restr::Result res = predictor.predict(emb, a.texts);
  const int64_t max_words = predictor.max_words();
  const size_t k = res.size();
  std::vector<std::string> names;
  for (size_t i = 0; i < k; ++i) {
    restr::Prediction p = res[i];
    names.push_back(std::to_string(i + 1) + "_" + slugify(p.text));
    if (p.truncated)
      std::cerr << "warning: expression " << i + 1 << " has " << restr::split_words(p.text).size() << " words; only the first " << max_words
                << " were used\n";
    if (p.n_unknown) {
      std::cerr << "warning: expression " << i + 1 << ": words not in the vocabulary (read as <unk>): ";
      for (size_t j = 0; j < p.n_unknown; ++j) std::cerr << (j ? ", " : "") << p.unknown_words[j];
      std::cerr << "\n";
    }
    if (p.no_known_words)
      std::cerr << "warning: expression " << i + 1 << " (" << py_repr(p.text) << "): the model knows none of its content words, so its mask is a guess (--list-words prints the words it knows)\n";
  }
  const restr::Timings t = res.timings();
  const std::string mode = predictor.mode();
  json runners = json::object(), graphs = json::object();
  for (std::string g : mode == "split" ? std::vector<std::string>{"vision", "language", "fusion_decoder"} : std::vector<std::string>{"end_to_end"}) {
    runners[g] = provider == "cpu" ? json::array({"CPUExecutionProvider"})  // restr-predict's lists: CPU always last
                                   : json::array({"CUDAExecutionProvider", "CPUExecutionProvider"});
    graphs[g] = a.precision == "fp32" ? g : g + "_" + a.precision;  // the manifest key of the graph that ran
  }
  json exprs = json::array();
  for (size_t i = 0; i < k; ++i) {
    restr::Prediction p = res[i];
    json unknown = json::array();
    for (size_t j = 0; j < p.n_unknown; ++j) unknown.push_back(p.unknown_words[j]);
    json timings = mode == "split" ? json{{"language", round3(t.language / k)}, {"fusion_decoder", round3(t.fusion_decoder / k)}}
                                   : json{{"end_to_end", round3(t.fusion_decoder / k)}};
    timings["postprocess"] = round3(t.postprocess / k);
    exprs.push_back({{"index", i + 1}, {"text", p.text}, {"mask", names[i] + ".png"},
                     {"overlay", a.overlay ? json(names[i] + "_overlay.png") : json()}, {"area", p.area},
                     {"area_fraction", round6(double(p.area) / double(std::max<int64_t>(1, p.height * p.width)))},
                     {"score", round6(p.score)}, {"patch_score", round6(p.patch_score)}, {"unknown_words", unknown},
                     {"no_known_words", bool(p.no_known_words)}, {"truncated", bool(p.truncated)}, {"timings_ms", timings}});
  }
  json summary = {{"artifacts", py_path(a.artifacts)}, {"model", predictor.model_name()}, {"backend", "ort"}, {"runners", runners}, {"graphs", graphs}, {"mode", mode},
                  {"image", {{"path", py_path(a.image)}, {"width", image.width}, {"height", image.height}}}, {"threshold", predictor.threshold()},
                  {"expressions", exprs},
                  {"timings_ms", {{"load", round3(load_ms)}, {"preprocess", round3(decode_ms + t.preprocess)}, {"vision", round3(t.vision)},
                                  {"language_fusion_per_expression", round3((t.language + t.fusion_decoder) / k)},
                                  {"postprocess_per_expression", round3(t.postprocess / k)}, {"total", round3(ms(t_start))}}},
                  {"sheet", a.sheet ? json("sheet.png") : json()}};
  summary["threshold"] = a.threshold > 0 ? a.threshold_text : shortest(predictor.threshold());

  fs::path out(a.out);
  const bool created = !fs::exists(out);
  fs::create_directories(out);
  std::vector<std::string> files;  // what the staging folder will hold
  for (size_t i = 0; i < k; ++i) {
    files.push_back(names[i] + ".png");
    if (a.overlay) files.push_back(names[i] + "_overlay.png");
  }
  if (a.sheet) files.push_back("sheet.png");
  files.push_back("summary.json");  // last: its presence means the rest is complete
  fs::path tmp;
  std::optional<restr_cli::Cleanup> cleanup;
  {
    restr_cli::HoldSignals hold;  // no moment with the folder made and its cleanup not armed
    tmp = restr_cli::make_staging_folder(out);
    std::vector<std::string> paths;
    for (const auto& f : files) paths.push_back(tmp / f);
    cleanup.emplace(paths, created ? std::vector<std::string>{tmp, out} : std::vector<std::string>{tmp});
  }
  try {
    for (size_t i = 0; i < k; ++i) {
      restr::Prediction p = res[i];
      std::vector<uint8_t> grey(size_t(p.height * p.width));
      for (size_t j = 0; j < grey.size(); ++j) grey[j] = p.mask[j] ? 255 : 0;
      restr_cli::write_png(tmp / (names[i] + ".png"), grey.data(), int(p.width), int(p.height), 1);
      if (a.overlay) restr_cli::write_png(tmp / (names[i] + "_overlay.png"), restr_cli::overlay(image, p.mask).data(), image.width, image.height, 3);
    }
    if (a.sheet) {
      std::vector<const uint8_t*> masks;
      std::vector<std::string> captions;
      char score[32];
      for (size_t i = 0; i < k; ++i) {
        restr::Prediction p = res[i];
        masks.push_back(p.mask);
        std::snprintf(score, sizeof score, "%.2f", p.score);
        // the score first, as restr-predict: a long expression is cut at the tile's second line, never the score
        captions.push_back(std::to_string(i + 1) + ". score " + score + (p.no_known_words ? ", no known words" : "") + ": " + p.text);
      }
      restr_cli::Image s = restr_cli::contact_sheet(image, masks, captions);
      restr_cli::write_png(tmp / "sheet.png", s.rgb.data(), s.width, s.height, 3);
    }
    write_text(tmp / "summary.json", dump(summary) + "\n");
    restr_cli::HoldSignals hold;  // the outputs move in whole; a signal meanwhile is handled after
    remove_previous(out);
    for (const auto& f : files) fs::rename(tmp / f, out / f);
    fs::remove_all(tmp);
    cleanup.reset();
  } catch (...) {
    fs::remove_all(tmp);
    if (created) fs::remove_all(out);
    throw;
  }
  if (a.has_json && a.json_path != "-") write_json_file(a.json_path, dump(summary) + "\n");
  if (a.has_json && a.json_path == "-") {
    std::cout << dump(summary) << "\n";
    return 0;
  }
  print_table(summary, a.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  restr_cli::handle_fatal_signals();
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return kBadInput;
  } catch (const restr::Error& e) {
    const bool bug = e.status() == RESTR_INTERNAL_ERROR;
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return bug ? kInternal : kBadInput;
  } catch (const restr_cli::FileError& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return kBadInput;
  } catch (const fs::filesystem_error& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return kBadInput;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: internal error (%s); please report it\n", kProg, e.what());
    return kInternal;
  }
}
