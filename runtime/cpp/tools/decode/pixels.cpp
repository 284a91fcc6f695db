#include "pixels.hpp"

#include <cstring>

namespace restr_cli::decode {

std::string one_printable_line(std::string text) {
  for (char& c : text)
    if (c == '\n') c = ' ';
    else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) c = '?';
  return text;
}

void check_size(const std::string& path, int64_t w, int64_t h) {
  if (w == 0 || h == 0) throw FileError(path + ": image has zero size");
  if (w * h > kMaxPixels)
    throw FileError(path + ": image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is larger than the 64,000,000 allowed");
}

int xmp_orientation(const uint8_t* data, size_t size) {
  static const char key[] = "tiff:Orientation";
  const uint8_t* end = data + size;
  for (const uint8_t* p = data; (p = static_cast<const uint8_t*>(std::memchr(p, 't', size_t(end - p)))) != nullptr; ++p) {
    if (size_t(end - p) < sizeof key + 1 || std::memcmp(p, key, sizeof key - 1) != 0) continue;
    const uint8_t* q = p + sizeof key - 1;
    if (*q == '>' || (*q == '=' && q + 2 < end && q[1] == '"' && ++q)) {
      const uint8_t digit = q[1];
      if (digit >= '0' && digit <= '9') return digit >= '1' && digit <= '8' ? digit - '0' : 1;
    }
  }
  return 0;
}

Image orient(const Image& src, int orientation) {
  if (orientation == 1) return src;
  const int h = src.height, w = src.width;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.rgb.resize(src.rgb.size());
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      int sy = y, sx = x;
      switch (orientation) {
        case 2: sx = w - 1 - x; break;                  // flip left-right
        case 3: sy = h - 1 - y; sx = w - 1 - x; break;  // rotate 180
        case 4: sy = h - 1 - y; break;                  // flip top-bottom
        case 5: sy = x; sx = y; break;                  // transpose
        case 6: sy = h - 1 - x; sx = y; break;          // rotate 90 clockwise
        case 7: sy = h - 1 - x; sx = w - 1 - y; break;  // transverse
        case 8: sy = x; sx = w - 1 - y; break;          // rotate 90 counter-clockwise
      }
      std::copy_n(&src.rgb[(size_t(sy) * w + sx) * 3], 3, &out.rgb[(size_t(y) * out.width + x) * 3]);
    }
  return out;
}

void cmyk_to_rgb(const uint8_t* ink, uint8_t* rgb, int width) {
  for (int x = 0; x < width; ++x, ink += 4, rgb += 3) {
    const int nk = ink[3];  // 255 - K
    for (int c = 0; c < 3; ++c) {
      const int t = (255 - ink[c]) * nk + 128;
      rgb[c] = uint8_t(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
    }
  }
}

Image over_black(const uint8_t* rgba, int w, int h, bool alpha) {
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(size_t(w) * size_t(h) * 3);
  for (size_t i = 0; i < size_t(w) * size_t(h); ++i)
    for (int c = 0; c < 3; ++c) im.rgb[i * 3 + c] = alpha ? uint8_t((rgba[i * 4 + c] * rgba[i * 4 + 3] + 127) / 255) : rgba[i * 4 + c];
  return im;
}

}  // namespace restr_cli::decode
