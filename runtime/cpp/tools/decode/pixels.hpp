// What restr-predict-cpp's decoders share: restr.runtime.transforms' size limits and conversions to
// RGB, and Pillow's orientation handling (ImageOps.exif_transpose), each as restr-predict does it.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "../image.hpp"

namespace restr_cli::decode {

constexpr int64_t kMaxPixels = 64000000;  // restr.runtime.transforms.MAX_IMAGE_PIXELS
constexpr const char* kTruncated = "image file is truncated";  // Pillow's words for data that runs out

// A library's message as one printable line: newlines become spaces, other control and non-ASCII
// bytes (some messages quote the file's own bytes) '?'.
std::string one_printable_line(std::string text);

// Refuses (FileError) a zero-size image or one of more than kMaxPixels, before it is decoded.
void check_size(const std::string& path, int64_t w, int64_t h);

// Pillow's getexif falls back on XMP when EXIF has no orientation: the digit after
// `tiff:Orientation="` or `tiff:Orientation>` (1-8; 1 for another digit), 0 when there is none.
int xmp_orientation(const uint8_t* data, size_t size);
// The orientation exif_transpose applies: EXIF's, else XMP's, else 1.
inline int orientation_of(int exif, int xmp) { return exif ? exif : xmp ? xmp : 1; }
// Pillow's ImageOps.exif_transpose: output pixel (y, x) from the source pixel the orientation names.
Image orient(const Image& src, int orientation);

// Pillow's CMYK to RGB convert, (255 - K) - C * (255 - K) / 255 with its rounding, on samples stored
// inverted (Adobe's polarity, as CMYK JPEGs hold them: "CMYK;I"); `ink` is width * 4 bytes.
void cmyk_to_rgb(const uint8_t* ink, uint8_t* rgb, int width);

// RGBA with transparent pixels composed over black, as restr.runtime.transforms.to_rgb; `alpha`
// false: the fourth byte is no alpha (Pillow's RGBX), the pixels are taken as they are.
Image over_black(const uint8_t* rgba, int w, int h, bool alpha = true);

// High-bit-depth greyscale (Pillow's modes I;16, I, F): stretched from its darkest to its brightest
// pixel onto 0..255, as restr.runtime.transforms.to_rgb does (Pillow's own convert would clip).
template <typename T>
Image stretch_grey(const T* data, int w, int h) {
  const size_t n = size_t(w) * size_t(h);
  double lo = double(data[0]), hi = lo;
  for (size_t i = 0; i < n; ++i) {  // NaN anywhere makes numpy's min and max NaN: every pixel 0
    const double v = double(data[i]);
    if (v != v) {
      lo = hi = v;
      break;
    }
    lo = std::min(lo, v), hi = std::max(hi, v);
  }
  const double scale = hi > lo ? 255.0 / (hi - lo) : 0.0;
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(n * 3);
  for (size_t i = 0; i < n; ++i) {
    const double v = (double(data[i]) - lo) * scale;
    const uint8_t g = v >= 0 && v < 256 ? uint8_t(v) : 0;  // truncated, as numpy's astype(uint8); NaN and inf give 0
    im.rgb[i * 3] = im.rgb[i * 3 + 1] = im.rgb[i * 3 + 2] = g;
  }
  return im;
}

}  // namespace restr_cli::decode
