#include "image_io.hpp"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>

namespace restr_cli {

Image load_image(const std::string& path) {
  int w = 0, h = 0, channels = 0;
  // restr.runtime.transforms.MAX_IMAGE_PIXELS, checked on the header before any pixel is decoded
  if (stbi_info(path.c_str(), &w, &h, &channels) && int64_t(w) * h > 64000000)
    throw std::runtime_error(path + ": image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is larger than the 64,000,000 allowed");
  std::unique_ptr<uint8_t, void (*)(void*)> data(stbi_load(path.c_str(), &w, &h, &channels, 4), stbi_image_free);
  if (!data) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error(path + ": no such file");
    std::fclose(f);
    throw std::runtime_error(path + ": not a readable image (" + stbi_failure_reason() + ")");
  }
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(size_t(w) * size_t(h) * 3);
  const uint8_t* src = data.get();
  for (size_t i = 0; i < size_t(w) * size_t(h); ++i)
    for (int c = 0; c < 3; ++c) im.rgb[i * 3 + c] = uint8_t((src[i * 4 + c] * src[i * 4 + 3] + 127) / 255);
  return im;
}

void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels) {
  if (!stbi_write_png(path.c_str(), width, height, channels, pixels, width * channels)) throw std::runtime_error(path + ": cannot be written");
}

std::vector<uint8_t> overlay(const Image& im, const uint8_t* mask) {
  static const float palette[6][3] = {{255, 64, 32}, {0, 220, 255}, {60, 255, 60}, {255, 0, 220}, {255, 230, 0}, {40, 80, 255}};
  const int w = im.width, h = im.height;
  double sum[3] = {0, 0, 0};
  size_t n = 0;
  for (size_t i = 0; i < size_t(w) * size_t(h); ++i)
    if (mask[i]) {
      ++n;
      for (int c = 0; c < 3; ++c) sum[c] += im.rgb[i * 3 + c];
    }
  int best = 0;
  if (n) {
    double far = -1;
    for (int k = 0; k < 6; ++k) {
      double d = 0;
      for (int c = 0; c < 3; ++c) d += std::pow(palette[k][c] - sum[c] / double(n), 2);
      if (d > far) far = d, best = k;
    }
  }
  std::vector<uint8_t> out(im.rgb);
  auto in = [&](int y, int x) { return y >= 0 && y < h && x >= 0 && x < w ? mask[size_t(y) * w + x] != 0 : true; };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = size_t(y) * w + x;
      if (!mask[i]) continue;
      const bool edge = !in(y - 1, x) || !in(y + 1, x) || !in(y, x - 1) || !in(y, x + 1);
      for (int c = 0; c < 3; ++c)
        out[i * 3 + c] = uint8_t(std::nearbyint(edge ? palette[best][c] : 0.5f * im.rgb[i * 3 + c] + 0.5f * palette[best][c]));
    }
  return out;
}

}  // namespace restr_cli
