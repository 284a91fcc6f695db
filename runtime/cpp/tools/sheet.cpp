#include "sheet.hpp"

#include <stb/stb_image_resize.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop

namespace restr_cli {

namespace {

constexpr int kLine = 14;  // caption line height, as visualize.contact_sheet

// The font has printable ASCII only: anything else shows as '?'.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c >= 32 && c < 127) out += char(c);
    else if ((c & 0xC0) != 0x80) out += '?';  // one '?' per UTF-8 character
  }
  return out;
}

int text_width(std::string s) { return stb_easy_font_width(s.data()); }

// Greedy word wrap to `width` pixels (visualize._wrap).
std::vector<std::string> wrap(const std::string& text, int width) {
  std::vector<std::string> lines;
  std::string current, word;
  std::istringstream words(text);
  while (words >> word) {
    std::string trial = current.empty() ? word : current + " " + word;
    if (!current.empty() && text_width(trial) > width) {
      lines.push_back(current);
      current = word;
    } else {
      current = trial;
    }
  }
  if (!current.empty()) lines.push_back(current);
  return lines;
}

// Draw `text` in black with its top-left at (x, y): the font's quads are axis-aligned rectangles.
void draw_text(Image& im, int x, int y, std::string text) {
  std::vector<char> quads(text.size() * 300 + 64);
  const int n = stb_easy_font_print(float(x), float(y), text.data(), nullptr, quads.data(), int(quads.size()));
  for (int q = 0; q < n; ++q) {
    const float* v = reinterpret_cast<const float*>(quads.data() + q * 64);  // 4 vertices of 16 bytes: x, y, z, rgba
    float x0 = v[0], y0 = v[1], x1 = v[0], y1 = v[1];
    for (int k = 1; k < 4; ++k) {
      x0 = std::min(x0, v[k * 4]), x1 = std::max(x1, v[k * 4]);
      y0 = std::min(y0, v[k * 4 + 1]), y1 = std::max(y1, v[k * 4 + 1]);
    }
    for (int py = std::max(0, int(std::floor(y0))); py < std::min(im.height, int(std::ceil(y1))); ++py)
      for (int px = std::max(0, int(std::floor(x0))); px < std::min(im.width, int(std::ceil(x1))); ++px)
        std::fill_n(&im.rgb[(size_t(py) * im.width + px) * 3], 3, uint8_t(0));
  }
}

}  // namespace

Image contact_sheet(const Image& image, const std::vector<const uint8_t*>& masks, const std::vector<std::string>& captions, int tile) {
  const double scale = double(tile) / std::max(image.width, image.height);
  const int tw = std::max(1, int(std::nearbyint(image.width * scale))), th = std::max(1, int(std::nearbyint(image.height * scale)));
  const int n = int(masks.size()), cols = std::min(4, std::max(1, n)), rows = (n + cols - 1) / cols;
  Image sheet;
  sheet.width = cols * (tw + 8) + 8;
  sheet.height = rows * (th + 2 * kLine + 12) + 8;
  sheet.rgb.assign(size_t(sheet.width) * sheet.height * 3, 255);
  std::vector<uint8_t> small(size_t(tw) * th * 3);
  for (int k = 0; k < n; ++k) {
    const int x = 8 + (k % cols) * (tw + 8), y = 8 + (k / cols) * (th + 2 * kLine + 12);
    std::vector<uint8_t> tinted = overlay(image, masks[k]);
    if (!stbir_resize_uint8_generic(tinted.data(), image.width, image.height, 0, small.data(), tw, th, 0, 3, STBIR_ALPHA_CHANNEL_NONE, 0,
                                    STBIR_EDGE_CLAMP, STBIR_FILTER_TRIANGLE, STBIR_COLORSPACE_LINEAR, nullptr))
      throw std::runtime_error("sheet.png: cannot scale an overlay");
    for (int r = 0; r < th; ++r) std::copy_n(&small[size_t(r) * tw * 3], tw * 3, &sheet.rgb[(size_t(y + r) * sheet.width + x) * 3]);
    std::vector<std::string> lines = wrap(printable(captions[k]), tw);
    for (size_t i = 0; i < lines.size() && i < 2; ++i) draw_text(sheet, x, y + th + 4 + int(i) * kLine, lines[i]);
  }
  return sheet;
}

}  // namespace restr_cli
