// The tokenizer of restr.runtime.tokenizer, ported: lower-case (Python's str.lower, full Unicode
// case mapping, through ICU), split on runs of non-word characters (Python re's \w: str.isalnum()
// or '_'), drop empty tokens and one trailing period, truncate to max_words, unknown -> <unk>.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace restr_impl {

// 'The dog, left of the bench.' -> {"the", "dog", "left", "of", "the", "bench"}. UTF-8 in and out;
// throws Error(RESTR_TEXT_ERROR) for invalid UTF-8, naming the expression by its 1-based `number`
// ("expression 2 is not valid UTF-8"; 0: "expression is ...").
std::vector<std::string> split_words(const std::string& text, size_t number = 0);
// The same with the manifest's vocab.tokenizer: "restr" (the above) or "authors" (their split,
// punctuation kept as tokens: restr.runtime.tokenizer.split_words). Throws Error(RESTR_ARTIFACT_ERROR)
// for another name.
std::vector<std::string> split_words(const std::string& text, size_t number, const std::string& tokenizer);

// Python's unicodedata.normalize("NFKD", text) without its combining characters (those of a
// non-zero combining class): 'Café x²' -> 'Cafe x2'. Throws Error(RESTR_TEXT_ERROR) for invalid UTF-8.
std::string without_accents(const std::string& text);

// Python's repr() of a str (UTF-8 in and out): quotes chosen and characters escaped as Python does,
// so messages that quote an expression read as restr-predict's. Throws Error(RESTR_TEXT_ERROR) for invalid UTF-8.
std::string py_repr(const std::string& text);

// Words that name nothing by themselves (tokenizer.FUNCTION_WORDS): for the no-known-words flag.
bool is_function_word(const std::string& word);

struct Encoded {
  std::vector<int64_t> words;    // K x max_words ids
  std::vector<uint8_t> pad_mask; // K x max_words, 1 = padding
  std::vector<std::vector<std::string>> unknown;  // per expression, words read as <unk> (repeats kept)
  std::vector<std::vector<std::string>> split;    // per expression, all its words (before truncation)
  std::vector<bool> truncated;
};

class Vocabulary {
 public:
  // vocab.txt's text: one word a line, "<pad>" and "<unk>" first. Throws Error(RESTR_ARTIFACT_ERROR).
  // `tokenizer`: how encode splits expressions (the manifest's vocab.tokenizer).
  static Vocabulary parse(const std::string& text, const std::string& where, const std::string& tokenizer = "restr");
  const std::string& tokenizer() const { return tokenizer_; }
  size_t size() const { return itos_.size(); }
  const std::string& word(size_t i) const { return itos_.at(i); }
  bool contains(const std::string& w) const { return stoi_.count(w) > 0; }
  Encoded encode(const std::vector<std::string>& texts, int64_t max_words) const;

 private:
  std::vector<std::string> itos_;
  std::unordered_map<std::string, int64_t> stoi_;
  std::string tokenizer_ = "restr";
};

}  // namespace restr_impl
