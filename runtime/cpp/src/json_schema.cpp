#include "json_schema.hpp"

#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <cmath>
#include <memory>
#include <set>
#include <stdexcept>

namespace restr_impl {

using json = nlohmann::ordered_json;

namespace {

const std::set<std::string> kKnown = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "const", "enum", "required", "properties",
    "additionalProperties", "items", "minItems", "maxItems", "minLength", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "anyOf"};

bool is_number(const json& v) { return v.is_number() && (!v.is_number_float() || std::isfinite(v.get<double>())); }

bool is_integer(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  double d = v.get<double>();
  return std::isfinite(d) && std::floor(d) == d;
}

bool has_type(const std::string& type, const json& v) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  if (type == "number") return is_number(v);
  if (type == "integer") return is_integer(v);
  throw std::invalid_argument("schema type '" + type + "' is not supported");
}

// Python's json.dumps look (", " and ": " separators, ASCII escapes), cut at 60 characters.
std::string dumps(const json& v) {
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + dumps(v[i]);
    return s + "]";
  }
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it, first = false) s += (first ? "" : ", ") + json(it.key()).dump(-1, ' ', true) + ": " + dumps(it.value());
    return s + "}";
  }
  return v.dump(-1, ' ', true);
}

std::string show(const json& v) {
  std::string s = dumps(v);
  return s.size() <= 60 ? s : s.substr(0, 57) + "...";
}

// A < B for two JSON numbers, exactly when both are integers.
bool less(const json& a, const json& b) {
  if (a.is_number_integer() && b.is_number_integer()) {
    if (a.is_number_unsigned() || b.is_number_unsigned()) {
      if (a.is_number_unsigned() && b.is_number_unsigned()) return a.get<uint64_t>() < b.get<uint64_t>();
      return a.is_number_unsigned() ? false : true;  // a negative signed value is below any unsigned one
    }
    return a.get<int64_t>() < b.get<int64_t>();
  }
  return a.get<double>() < b.get<double>();
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// re.search(pattern, text) through ICU's regular expressions: code points, not bytes, as in Python.
bool search(const std::string& pattern, const std::string& text) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::UnicodeString re = icu::UnicodeString::fromUTF8(pattern), input = icu::UnicodeString::fromUTF8(text);  // the matcher keeps a reference
  icu::RegexMatcher m(re, input, 0, err);
  if (U_FAILURE(err)) throw std::invalid_argument("schema pattern '" + pattern + "' is not a valid regular expression");
  const bool found = m.find(err);
  if (U_FAILURE(err)) throw std::invalid_argument("schema pattern '" + pattern + "' failed to run");
  return found;
}

const json& resolve(const json& root, const std::string& ref) {
  if (ref.rfind("#/", 0) != 0) throw std::invalid_argument("schema $ref '" + ref + "' is not a local #/ reference");
  const json* node = &root;
  size_t start = 2;
  while (start <= ref.size()) {
    size_t end = ref.find('/', start);
    std::string part = ref.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!node->is_object() || !node->contains(part)) throw std::invalid_argument("schema $ref '" + ref + "' does not resolve");
    node = &(*node)[part];
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return *node;
}

std::optional<std::string> check(const json& schema, const json& value, const json& root, const std::string& where) {
  if (!schema.is_object()) throw std::invalid_argument("schema node is not an object");
  for (auto it = schema.begin(); it != schema.end(); ++it)
    if (!kKnown.count(it.key())) throw std::invalid_argument("schema keyword '" + it.key() + "' is not supported by the C++ validator");
  const std::string at = where.empty() ? "manifest" : where;
  if (schema.contains("$ref")) return check(resolve(root, schema["$ref"].get<std::string>()), value, root, where);
  if (schema.contains("type")) {
    const std::string type = schema["type"].get<std::string>();
    if (!has_type(type, value))
      return at + ": " + show(value) + " is not " + (std::string("aeiou").find(type[0]) != std::string::npos ? "an " : "a ") + type;
  }
  if (schema.contains("const") && !(value == schema["const"])) return at + ": " + show(value) + " must be " + dumps(schema["const"]);
  if (schema.contains("enum")) {
    bool found = false;
    std::string all;
    for (const auto& e : schema["enum"]) {
      found = found || value == e;
      all += (all.empty() ? "" : ", ") + dumps(e);
    }
    if (!found) return at + ": " + show(value) + " is not one of " + all;
  }
  if (schema.contains("anyOf")) {
    std::optional<std::string> best;
    bool any = false;
    for (const auto& sub : schema["anyOf"]) {
      auto err = check(sub, value, root, where);
      if (!err) { any = true; break; }
      if (!best || err->size() < best->size()) best = err;
    }
    if (!any && best) return best;
  }
  if (is_number(value) && !value.is_boolean()) {
    if (schema.contains("minimum") && less(value, schema["minimum"])) return at + ": " + show(value) + " is below the minimum " + dumps(schema["minimum"]);
    if (schema.contains("exclusiveMinimum") && !less(schema["exclusiveMinimum"], value))
      return at + ": " + show(value) + " must be above " + dumps(schema["exclusiveMinimum"]);
    if (schema.contains("maximum") && less(schema["maximum"], value)) return at + ": " + show(value) + " is above the maximum " + dumps(schema["maximum"]);
  }
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    if (schema.contains("minLength") && code_points(s) < schema["minLength"].get<size_t>()) return at + ": " + show(value) + " is too short";
    if (schema.contains("pattern") && !search(schema["pattern"].get<std::string>(), s)) {
      std::string why = schema.contains("description") ? schema["description"].get<std::string>() : schema["pattern"].get<std::string>();
      return at + ": " + show(value) + " is not of the expected form (" + why + ")";
    }
  }
  if (value.is_array()) {
    if (schema.contains("minItems") && value.size() < schema["minItems"].get<size_t>())
      return at + ": has " + std::to_string(value.size()) + " items, needs at least " + dumps(schema["minItems"]);
    if (schema.contains("maxItems") && value.size() > schema["maxItems"].get<size_t>())
      return at + ": has " + std::to_string(value.size()) + " items, at most " + dumps(schema["maxItems"]) + " allowed";
    if (schema.contains("items"))
      for (size_t i = 0; i < value.size(); ++i)
        if (auto err = check(schema["items"], value[i], root, at + "[" + std::to_string(i) + "]")) return err;
  }
  if (value.is_object()) {
    if (schema.contains("required"))
      for (const auto& key : schema["required"])
        if (!value.contains(key.get<std::string>())) return at + ": required field '" + key.get<std::string>() + "' is missing";
    static const json kEmpty = json::object();
    const json& props = schema.contains("properties") ? schema["properties"] : kEmpty;
    const json extra = schema.contains("additionalProperties") ? schema["additionalProperties"] : json(true);
    for (auto it = value.begin(); it != value.end(); ++it) {
      const json& sub = props.contains(it.key()) ? props[it.key()] : extra;
      if (sub.is_boolean() && !sub.get<bool>()) return at + ": unexpected field '" + it.key() + "'";
      if (sub.is_object())
        if (auto err = check(sub, it.value(), root, where.empty() ? it.key() : where + "." + it.key())) return err;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> first_schema_error(const json& schema, const json& value) { return check(schema, value, schema, ""); }

}  // namespace restr_impl
