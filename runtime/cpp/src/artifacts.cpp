#include "artifacts.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "error.hpp"
#include "graph_io.hpp"
#include "json_schema.hpp"

namespace restr_impl {

using json = nlohmann::ordered_json;

namespace {

constexpr int kFormatVersion = 1;

// The graphs the runtime chains: input and output names, and each tensor's shape after the first
// axis in the manifest's sizes (graph_io.hpp, generated from restr.runtime.formats.GRAPH_IO).
const auto& kGraphIO = graph_io::model_graphs;
const auto& kTensorDims = graph_io::tensor_dims;

// Python's repr of a list of names or a JSON shape: ['a', 'b'], ['batch', 3, 96].
std::string pyrepr(const json& v) {
  if (v.is_string()) return "'" + v.get<std::string>() + "'";
  if (!v.is_array()) return v.dump();
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + pyrepr(v[i]);
  return s + "]";
}

json sorted(const std::set<std::string>& names) { return json(std::vector<std::string>(names.begin(), names.end())); }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail(RESTR_ARTIFACT_ERROR, path + ": file named by the manifest is missing");
    fail(RESTR_ARTIFACT_ERROR, path + ": cannot be read");
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(RESTR_ARTIFACT_ERROR, path + ": cannot be read");
  return ss.str();
}

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::string first_line(const std::string& s) { return s.substr(0, std::min(s.find('\n'), size_t(200))); }

}  // namespace

std::string py_path(const std::string& path) {
  std::string out = path.rfind("//", 0) == 0 && path.rfind("///", 0) != 0 ? "//" : path.rfind("/", 0) == 0 ? "/" : "";
  const size_t root = out.size();
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    const std::string part = path.substr(i, j - i);
    if (!part.empty() && part != ".") out += (out.size() > root ? "/" : "") + part;
    i = j + 1;
  }
  return out.empty() ? "." : out;
}

std::string sha256_hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &n, EVP_sha256(), nullptr) != 1) fail(RESTR_INTERNAL_ERROR, "OpenSSL's SHA-256 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
  return out;
}

const char* const kPrecisions[3] = {"fp32", "fp16", "int8"};

bool is_precision(const std::string& p) {
  for (const char* q : kPrecisions)
    if (p == q) return true;
  return false;
}

std::string base_graph(const std::string& key) {
  for (const char* q : kPrecisions) {
    const std::string suffix = std::string("_") + q;
    if (key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
      return key.substr(0, key.size() - suffix.size());
  }
  return key;
}

std::string check_consistency(const json& m) {
  const int64_t s = m["image_size"].get<int64_t>(), p = m["patch_size"].get<int64_t>();
  if (s % p) return "image_size " + std::to_string(s) + " is not a multiple of patch_size " + std::to_string(p);
  if (m["num_patches"].get<int64_t>() != (s / p) * (s / p))
    return "num_patches " + m["num_patches"].dump() + " is not (image_size / patch_size)^2 = " + std::to_string((s / p) * (s / p));
  const std::map<std::string, int64_t> sizes = {
      {"S", s}, {"L", m["max_words"].get<int64_t>()}, {"N", m["num_patches"].get<int64_t>()}, {"D", m["feature_width"].get<int64_t>()}};
  for (auto it = m["graphs"].begin(); it != m["graphs"].end(); ++it) {
    const std::string base = base_graph(it.key());
    auto io = kGraphIO.find(base);
    if (io == kGraphIO.end()) continue;
    const json& g = it.value();
    std::set<std::string> ins, outs;
    for (const auto& t : g["inputs"]) ins.insert(t["name"].get<std::string>());
    for (const auto& t : g["outputs"]) outs.insert(t["name"].get<std::string>());
    if (ins != io->second.first || outs != io->second.second)
      return "graphs." + it.key() + ": inputs " + pyrepr(sorted(ins)) + " and outputs " + pyrepr(sorted(outs)) + "; the runtime needs " +
             pyrepr(sorted(io->second.first)) + " -> " + pyrepr(sorted(io->second.second));
    for (const json* list : {&g["inputs"], &g["outputs"]}) {
      for (const auto& t : *list) {
        json want = json::array();
        std::string want_text;
        for (const auto& d : kTensorDims.at(t["name"].get<std::string>())) {
          auto size = sizes.find(d);
          want.push_back(size != sizes.end() ? size->second : std::stoll(d));
          want_text += ", " + want.back().dump();
        }
        const json& shape = t["shape"];
        bool ok = !shape.empty() && shape[0].is_string() && shape.size() == want.size() + 1;
        for (size_t i = 0; ok && i < want.size(); ++i) ok = shape[i + 1] == want[i];
        if (!ok)
          return "graphs." + it.key() + ": tensor '" + t["name"].get<std::string>() + "' has shape " + pyrepr(shape) +
                 ", the manifest's sizes give [batch" + want_text + "]";
      }
    }
  }
  return "";
}

Artifacts Artifacts::open(const std::string& given) {
  if (given.empty())  // Path("") is ".": the message would name a folder nobody asked for
    fail(RESTR_INVALID_ARGUMENT, "folder is an empty string: give the path of an export folder (one restr-export wrote, holding manifest.json)");
  const std::string folder = py_path(given);  // as Python's Path(folder): "export/" and "export" read alike
  if (!is_dir(folder))
    fail(RESTR_ARTIFACT_ERROR, folder + ": " + (exists(folder) ? "not a folder" : "no such folder") + " (expected a restr export folder)");
  const std::string path = py_path(folder + "/manifest.json");
  if (!exists(path)) fail(RESTR_ARTIFACT_ERROR, folder + ": no manifest.json (not a restr export folder; make one with restr-export)");
  json m;
  try {
    m = json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(RESTR_ARTIFACT_ERROR, path + ": not a readable JSON manifest (" + first_line(e.what()) + ")");
  }
  if (!m.is_object()) fail(RESTR_ARTIFACT_ERROR, path + ": not a restr manifest (a JSON object was expected)");
  if (!m.contains("format_version") || m["format_version"] != json(kFormatVersion))
    fail(RESTR_ARTIFACT_ERROR, path + ": manifest format_version " + (m.contains("format_version") ? m["format_version"].dump() : "None") +
                                   " is not supported by this runtime (it reads version 1); re-export with a matching restr version");
  std::string problem;
  if (auto err = first_schema_error(manifest_schema(), m)) problem = *err;
  if (problem.empty()) problem = check_consistency(m);
  if (!problem.empty()) fail(RESTR_ARTIFACT_ERROR, path + ": manifest is invalid: " + problem);

  Artifacts a;
  a.root = folder;
  a.image_size = m["image_size"].get<int64_t>();
  a.max_words = m["max_words"].get<int64_t>();
  a.num_patches = m["num_patches"].get<int64_t>();
  a.max_batch = m.value("max_batch", int64_t(8));
  a.threshold = m.value("threshold", 0.5f);
  if (m.contains("model") && m["model"].is_object() && m["model"].contains("name")) a.model_name = m["model"]["name"].get<std::string>();
  for (auto it = m["graphs"].begin(); it != m["graphs"].end(); ++it) {
    const json& g = it.value();
    GraphInfo info{it.key(), py_path(folder + "/" + g["file"].get<std::string>()), g["sha256"].get<std::string>(), {}, {}};
    for (auto [list, specs] : {std::pair{&g["inputs"], &info.inputs}, std::pair{&g["outputs"], &info.outputs}})
      for (const auto& t : *list) {
        TensorSpec spec{t["name"].get<std::string>(), {}, ""};
        for (const auto& d : t["shape"]) {
          spec.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
          spec.shape_text += (spec.shape.size() > 1 ? ", " : "") + pyrepr(d);
        }
        spec.shape_text = "(" + spec.shape_text + (spec.shape.size() == 1 ? ",)" : ")");  // a Python tuple, as TensorSpec.shape
        specs->push_back(std::move(spec));
      }
    a.graphs[it.key()] = std::move(info);
  }
  a.vocab_path = py_path(folder + "/" + m["vocab"]["file"].get<std::string>());
  a.vocab_sha256 = m["vocab"].value("sha256", "");
  a.tokenizer = m["vocab"].value("tokenizer", "restr");
  a.vocab_size = m["vocab"].value("size", int64_t(-1));
  return a;
}

const GraphInfo& Artifacts::graph(const std::string& key) const {
  auto it = graphs.find(key);
  if (it == graphs.end()) {
    std::string have;
    for (const auto& g : graphs) have += (have.empty() ? "" : ", ") + g.first;
    fail(RESTR_ARTIFACT_ERROR, root + ": the export has no '" + key + "' graph (it has: " + (have.empty() ? "none" : have) + ")");
  }
  return it->second;
}

std::string Artifacts::read_vocab() const {
  std::string data = read_file(vocab_path);
  if (!vocab_sha256.empty() && sha256_hex(data) != vocab_sha256)
    fail(RESTR_ARTIFACT_ERROR, vocab_path + ": sha256 does not match the manifest (the file is corrupt or was changed after export)");
  return data;
}

std::string Artifacts::read_verified(const std::string& path, const std::string& sha256) const {
  std::string data = read_file(path);
  std::string digest = sha256_hex(data);
  if (!sha256.empty() && digest != sha256)
    fail(RESTR_ARTIFACT_ERROR, path + ": sha256 " + digest.substr(0, 12) + "... does not match the manifest's " + sha256.substr(0, 12) +
                                   "... (the file is corrupt or was changed after export)");
  return data;
}

}  // namespace restr_impl
