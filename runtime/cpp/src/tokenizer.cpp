#include "tokenizer.hpp"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <cstdio>
#include <unordered_set>

#include "error.hpp"

namespace restr_impl {

namespace {

const char* const kPad = "<pad>";
const char* const kUnk = "<unk>";

// Python's str.isspace (what str.strip() removes): bidirectional class WS, B or S, or category Zs.
bool py_isspace(UChar32 c) {
  UCharDirection d = u_charDirection(c);
  return d == U_WHITE_SPACE_NEUTRAL || d == U_BLOCK_SEPARATOR || d == U_SEGMENT_SEPARATOR || u_charType(c) == U_SPACE_SEPARATOR;
}

// Python re's \w on str: str.isalnum() (a letter: Lu Ll Lt Lm Lo; or any Numeric_Type) or '_'.
bool py_isword(UChar32 c) {
  switch (u_charType(c)) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER: case U_OTHER_LETTER:
      return true;
    default:
      return c == '_' || u_getIntPropertyValue(c, UCHAR_NUMERIC_TYPE) != U_NT_NONE;
  }
}

// "expression", or "expression 2" for the 1-based `number` (0: none): how errors name the text.
std::string named(size_t number) { return number ? "expression " + std::to_string(number) : "expression"; }

std::u16string to_utf16(const std::string& s, size_t number = 0) {
  if (s.size() > size_t(INT32_MAX / 4)) fail(RESTR_TEXT_ERROR, named(number) + " is too long");
  UErrorCode err = U_ZERO_ERROR;
  int32_t n = 0;
  u_strFromUTF8(nullptr, 0, &n, s.data(), int32_t(s.size()), &err);
  if (err != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(err)) fail(RESTR_TEXT_ERROR, named(number) + " is not valid UTF-8");
  std::u16string out(size_t(n), u'\0');
  err = U_ZERO_ERROR;
  u_strFromUTF8(reinterpret_cast<UChar*>(out.data()), n, nullptr, s.data(), int32_t(s.size()), &err);
  if (U_FAILURE(err)) fail(RESTR_TEXT_ERROR, named(number) + " is not valid UTF-8");
  return out;
}

std::string to_utf8(const char16_t* s, int32_t len) {
  UErrorCode err = U_ZERO_ERROR;
  int32_t n = 0;
  u_strToUTF8(nullptr, 0, &n, reinterpret_cast<const UChar*>(s), len, &err);
  std::string out(size_t(n), '\0');
  err = U_ZERO_ERROR;
  u_strToUTF8(out.data(), n, nullptr, reinterpret_cast<const UChar*>(s), len, &err);
  if (U_FAILURE(err)) fail(RESTR_TEXT_ERROR, "expression is not valid Unicode");
  return out;
}

std::u16string lower(const std::u16string& s) {
  UErrorCode err = U_ZERO_ERROR;
  auto src = reinterpret_cast<const UChar*>(s.data());
  int32_t n = u_strToLower(nullptr, 0, src, int32_t(s.size()), "", &err);  // root locale: Python's mapping
  std::u16string out(size_t(n), u'\0');
  err = U_ZERO_ERROR;
  u_strToLower(reinterpret_cast<UChar*>(out.data()), n, src, int32_t(s.size()), "", &err);
  if (U_FAILURE(err)) fail(RESTR_TEXT_ERROR, "expression cannot be lower-cased");
  return out;
}

// [begin, end) of s without the white space at either end, as Python's str.strip().
void strip(const std::u16string& s, int32_t& begin, int32_t& end) {
  begin = 0, end = int32_t(s.size());
  while (begin < end) {
    UChar32 c;
    int32_t i = begin;
    U16_NEXT(s.data(), i, end, c);
    if (!py_isspace(c)) break;
    begin = i;
  }
  while (end > begin) {
    UChar32 c;
    int32_t i = end;
    U16_PREV(s.data(), begin, i, c);
    if (!py_isspace(c)) break;
    end = i;
  }
}

// The authors' split (utils/text_processing.py of SouthFlame/restr): Python's re.split(r'(\W+)', ...)
// of the stripped text, keeping each run of non-word characters that holds more than white space as
// a token as it is (", " with its space), each token lower-cased on its own (split first: 'İ' + its
// word stay one token), and a last token of exactly "." dropped.
std::vector<std::string> split_authors(const std::string& text, size_t number) {
  const std::u16string s = to_utf16(text, number);
  int32_t begin, end;
  strip(s, begin, end);
  std::vector<std::string> words;
  int32_t i = begin;
  while (i < end) {
    const int32_t start = i;
    UChar32 c;
    U16_NEXT(s.data(), i, end, c);
    const bool word = py_isword(c);
    bool blank = !word && py_isspace(c);
    for (int32_t next = i; next < end; i = next) {
      U16_NEXT(s.data(), next, end, c);
      if (py_isword(c) != word) break;
      blank = blank && py_isspace(c);
    }
    if (!blank) {
      const std::u16string token = lower(s.substr(size_t(start), size_t(i - start)));
      words.push_back(to_utf8(token.data(), int32_t(token.size())));
    }
  }
  if (!words.empty() && words.back() == ".") words.pop_back();
  return words;
}

}  // namespace

std::vector<std::string> split_words(const std::string& text, size_t number) {
  std::u16string s = to_utf16(text, number);
  int32_t begin, end;
  strip(s, begin, end);
  std::u16string t = lower(s.substr(size_t(begin), size_t(end - begin)));
  if (!t.empty() && t.back() == u'.') t.pop_back();
  std::vector<std::string> words;
  int32_t i = 0, start = -1, n = int32_t(t.size());
  while (i < n) {
    int32_t here = i;
    UChar32 c;
    U16_NEXT(t.data(), i, n, c);
    bool w = py_isword(c);
    if (w && start < 0) start = here;
    if (!w && start >= 0) {
      words.push_back(to_utf8(t.data() + start, here - start));
      start = -1;
    }
  }
  if (start >= 0) words.push_back(to_utf8(t.data() + start, n - start));
  return words;
}

// `tokenizer`: the manifest's vocab.tokenizer, "restr" or "authors" (restr.runtime.tokenizer.split_words).
std::vector<std::string> split_words(const std::string& text, size_t number, const std::string& tokenizer) {
  if (tokenizer == "restr") return split_words(text, number);
  if (tokenizer == "authors") return split_authors(text, number);
  fail(RESTR_ARTIFACT_ERROR, "unknown tokenizer \"" + tokenizer + "\" (restr or authors)");
}

std::string without_accents(const std::string& text) {
  const std::u16string s = to_utf16(text);
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfkd = unorm2_getNFKDInstance(&err);
  const auto src = reinterpret_cast<const UChar*>(s.data());
  const int32_t n = U_SUCCESS(err) ? unorm2_normalize(nfkd, src, int32_t(s.size()), nullptr, 0, &err) : 0;
  std::u16string full(size_t(n), u'\0');
  err = U_ZERO_ERROR;
  unorm2_normalize(nfkd, src, int32_t(s.size()), reinterpret_cast<UChar*>(full.data()), n, &err);
  if (U_FAILURE(err)) fail(RESTR_TEXT_ERROR, "expression cannot be normalised (NFKD)");
  std::u16string kept;
  for (int32_t i = 0; i < n;) {
    const int32_t at = i;
    UChar32 c;
    U16_NEXT(full.data(), i, n, c);
    if (u_getCombiningClass(c) == 0) kept.append(full, size_t(at), size_t(i - at));
  }
  return to_utf8(kept.data(), int32_t(kept.size()));
}

std::string py_repr(const std::string& text) {
  std::u16string s = to_utf16(text);
  const bool has_single = s.find(u'\'') != std::u16string::npos, has_double = s.find(u'"') != std::u16string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  int32_t i = 0, n = int32_t(s.size());
  while (i < n) {
    const int32_t here = i;
    UChar32 c;
    U16_NEXT(s.data(), i, n, c);
    char buf[16];
    if (c == quote || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\t' || c == '\n' || c == '\r') {
      out += c == '\t' ? "\\t" : c == '\n' ? "\\n" : "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      out += buf;
    } else if (c < 0x7f) {
      out += char(c);
    } else {
      // Python's str.isprintable: not Cc, Cf, Cs, Co, Cn, Zl, Zp, nor Zs (other than ' ')
      switch (u_charType(c)) {
        case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR: case U_UNASSIGNED:
        case U_LINE_SEPARATOR: case U_PARAGRAPH_SEPARATOR: case U_SPACE_SEPARATOR:
          std::snprintf(buf, sizeof buf, c <= 0xff ? "\\x%02x" : c <= 0xffff ? "\\u%04x" : "\\U%08x", unsigned(c));
          out += buf;
          break;
        default:
          out += to_utf8(s.data() + here, i - here);
      }
    }
  }
  return out + quote;
}

bool is_function_word(const std::string& word) {
  static const std::unordered_set<std::string> words = {
      "a", "an", "the", "this", "that", "these", "those", "of", "to", "in", "on", "at", "by", "for", "with", "from",
      "and", "or", "but", "is", "are", "be", "it", "its", "one", "ones", "which", "who", "whose", "what", "there",
      "here", "thing", "things", "object", "objects", "some", "any", "his", "her", "their", "my", "your", "our"};
  return words.count(word) > 0;
}

Vocabulary Vocabulary::parse(const std::string& text, const std::string& where, const std::string& tokenizer) {
  if (tokenizer != "restr" && tokenizer != "authors")
    fail(RESTR_ARTIFACT_ERROR, where + ": unknown tokenizer \"" + tokenizer + "\" (restr or authors)");
  // Python's splitlines for the line ends a vocabulary can hold (\n, \r\n, \r)
  std::vector<std::string> lines;
  std::string line;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n' || c == '\r') {
      lines.push_back(line);
      line.clear();
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      line += c;
    }
  }
  if (!line.empty()) lines.push_back(line);
  if (lines.size() < 2 || lines[0] != kPad || lines[1] != kUnk)
    fail(RESTR_ARTIFACT_ERROR, where + ": not a restr vocabulary (must start with <pad> and <unk>)");
  Vocabulary v;
  v.tokenizer_ = tokenizer;
  for (const auto& w : lines) {
    if (v.itos_.size() >= 2 && (w == kPad || w == kUnk)) continue;
    if (v.stoi_.emplace(w, int64_t(v.itos_.size())).second) v.itos_.push_back(w);
  }
  return v;
}

Encoded Vocabulary::encode(const std::vector<std::string>& texts, int64_t max_words) const {
  Encoded e;
  const size_t L = size_t(max_words);
  e.words.assign(texts.size() * L, 0);
  e.pad_mask.assign(texts.size() * L, 1);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<std::string> words = split_words(texts[i], i + 1, tokenizer_);
    e.truncated.push_back(words.size() > L);
    std::vector<std::string> unknown;
    for (size_t j = 0; j < words.size() && j < L; ++j) {
      auto it = stoi_.find(words[j]);
      e.words[i * L + j] = it == stoi_.end() ? 1 : it->second;
      e.pad_mask[i * L + j] = 0;
      if (it == stoi_.end()) unknown.push_back(words[j]);
    }
    e.unknown.push_back(std::move(unknown));
    e.split.push_back(std::move(words));
  }
  return e;
}

}  // namespace restr_impl
