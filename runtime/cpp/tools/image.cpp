#include "image.hpp"

#include <stb/stb_image_write.h>

#include <algorithm>

namespace restr_cli {

void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels) {
  if (!stbi_write_png(path.c_str(), width, height, channels, pixels, width * channels)) throw FileError(path + ": cannot be written");
}

int contour_width(int height, int width) { return std::max(2, std::max(height, width) / 300); }

std::vector<uint8_t> overlay(const Image& im, const uint8_t* mask) {
  constexpr uint32_t kKeep = 128;  // round(256 * (1 - alpha)), alpha 0.5: half the colour, at half the brightness
  const int w = im.width, h = im.height;
  std::vector<uint8_t> out(im.rgb.size());
  int y0 = h, y1 = -1, x0 = w, x1 = -1;  // the mask's bounding box
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = size_t(y) * w + x;
      const uint8_t* p = &im.rgb[i * 3];
      uint8_t* q = &out[i * 3];
      if (mask[i]) {
        std::copy_n(p, 3, q);
        y0 = std::min(y0, y), y1 = std::max(y1, y), x0 = std::min(x0, x), x1 = std::max(x1, x);
        continue;
      }
      const uint32_t luma = (19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16;  // Pillow's convert("L")
      for (int c = 0; c < 3; ++c) q[c] = uint8_t(((p[c] + luma) * kKeep) >> 9);
    }
  if (y1 < 0) return out;
  // The contour: pixels outside the mask with a mask pixel within Chebyshev distance r, found over
  // the bounding box grown by r (clipped) as a row-wise then a column-wise dilation.
  const int r = contour_width(h, w);
  y0 = std::max(0, y0 - r), y1 = std::min(h - 1, y1 + r), x0 = std::max(0, x0 - r), x1 = std::min(w - 1, x1 + r);
  const int bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  std::vector<uint8_t> near(size_t(bw) * bh), grown(near.size());
  // out[i] = any(in[i - r .. i + r]) along a line of n values `step` apart: two scans for the nearest one on each side
  auto dilate = [r](const uint8_t* in, uint8_t* dst, int n, size_t step) {
    for (int i = 0, last = -r - 1; i < n; ++i) {
      if (in[size_t(i) * step]) last = i;
      dst[size_t(i) * step] = i - last <= r;
    }
    for (int i = n - 1, next = n + r; i >= 0; --i) {
      if (in[size_t(i) * step]) next = i;
      dst[size_t(i) * step] |= next - i <= r;
    }
  };
  for (int y = 0; y < bh; ++y) dilate(&mask[size_t(y0 + y) * w + x0], &near[size_t(y) * bw], bw, 1);
  for (int x = 0; x < bw; ++x) dilate(&near[size_t(x)], &grown[size_t(x)], bh, size_t(bw));
  for (int y = 0; y < bh; ++y)
    for (int x = 0; x < bw; ++x) {
      const size_t i = size_t(y0 + y) * w + x0 + x;
      if (grown[size_t(y) * bw + x] && !mask[i]) std::fill_n(&out[i * 3], 3, uint8_t(255));  // white, visualize.DEFAULT_COLOR
    }
  return out;
}

}  // namespace restr_cli
