// runtime/cpp/src/tokenizer.cpp's split_words on stdin, for tests/test_authors_pipeline.py:
//   split_words TOKENIZER < texts     one text a line, hex-encoded UTF-8; out: its words, each
//                                     hex-encoded, space-separated, one line a text (ERROR <message>
//                                     for a text the tokenizer refuses)
#include <iostream>
#include <string>
#include <vector>

#include "error.hpp"
#include "tokenizer.hpp"

namespace restr_impl {
std::vector<std::string> split_words(const std::string& text, size_t number, const std::string& tokenizer);
}

static std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

static std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::string line;
  while (std::getline(std::cin, line)) {
    try {
      std::string out;
      for (const auto& w : restr_impl::split_words(unhex(line), 0, argv[1])) out += (out.empty() ? "" : " ") + hex(w);
      std::cout << out << "\n";
    } catch (const restr_impl::Error& e) {
      std::cout << "ERROR " << e.what() << "\n";
    }
  }
  return 0;
}
