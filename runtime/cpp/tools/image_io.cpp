#include "image_io.hpp"

#include <jpeglib.h>
#include <libexif/exif-data.h>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <csetjmp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>

namespace restr_cli {

namespace {

constexpr int64_t kMaxPixels = 64000000;  // restr.runtime.transforms.MAX_IMAGE_PIXELS

void check_size(const std::string& path, int64_t w, int64_t h) {
  if (w == 0 || h == 0) throw FileError(path + ": image has zero size");
  if (w * h > kMaxPixels)
    throw FileError(path + ": image of " + std::to_string(w) + "x" + std::to_string(h) + " pixels is larger than the 64,000,000 allowed");
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FileError(path + ": no such file");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
};

// The EXIF orientation (1-8) in a JPEG's APP1 markers, through libexif; 1 when there is none.
int exif_orientation(jpeg_decompress_struct& cinfo) {
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker != JPEG_APP0 + 1) continue;
    std::unique_ptr<ExifData, void (*)(ExifData*)> exif(exif_data_new_from_data(m->data, m->data_length), exif_data_unref);
    if (!exif) continue;
    if (ExifEntry* e = exif_data_get_entry(exif.get(), EXIF_TAG_ORIENTATION))
      if (e->format == EXIF_FORMAT_SHORT && e->components >= 1) {
        int o = exif_get_short(e->data, exif_data_get_byte_order(exif.get()));
        return o >= 1 && o <= 8 ? o : 1;
      }
  }
  return 1;
}

// libjpeg(-turbo) with its default (ISLOW, fancy upsampling) decoding, as Pillow decodes JPEG.
Image decode_jpeg(const std::string& path, const std::vector<uint8_t>& bytes, int& orientation) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = [](j_common_ptr c) { longjmp(reinterpret_cast<JpegError*>(c->err)->jump, 1); };
  Image im;
  if (setjmp(err.jump)) {
    char msg[JMSG_LENGTH_MAX];
    err.mgr.format_message(reinterpret_cast<j_common_ptr>(&cinfo), msg);
    jpeg_destroy_decompress(&cinfo);
    throw FileError(path + ": not a readable image (" + msg + ")");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  try {
    check_size(path, cinfo.image_width, cinfo.image_height);
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    throw FileError(path + ": CMYK JPEG images are not supported by restr-predict-cpp (convert it to RGB)");
  }
  orientation = exif_orientation(cinfo);
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  im.width = int(cinfo.output_width);
  im.height = int(cinfo.output_height);
  im.rgb.resize(size_t(im.width) * im.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = im.rgb.data() + size_t(cinfo.output_scanline) * im.width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return im;
}

// Pillow's ImageOps.exif_transpose: output pixel (y, x) from the source pixel the orientation names.
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

// 16-bit greyscale: stretched from its darkest to its brightest pixel onto 0..255, as
// restr.runtime.transforms.to_rgb does (stb would keep the high byte, Pillow's own convert clips).
Image load_grey16(const std::string& path, const std::vector<uint8_t>& bytes) {
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<uint16_t, void (*)(void*)> data(stbi_load_16_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels, 1),
                                                  stbi_image_free);
  if (!data) throw FileError(path + ": not a readable image (" + stbi_failure_reason() + ")");
  const size_t n = size_t(w) * size_t(h);
  const auto [lo, hi] = std::minmax_element(data.get(), data.get() + n);
  const double l = *lo, scale = *hi > *lo ? 255.0 / (double(*hi) - l) : 0.0;
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(n * 3);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t v = uint8_t((data.get()[i] - l) * scale);  // truncated, as numpy's astype(uint8)
    im.rgb[i * 3] = im.rgb[i * 3 + 1] = im.rgb[i * 3 + 2] = v;
  }
  return im;
}

}  // namespace

Image load_image(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) {
    int orientation = 1;
    Image im = decode_jpeg(path, bytes, orientation);
    return orient(im, orientation);
  }
  int w = 0, h = 0, channels = 0;
  if (stbi_info_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels)) check_size(path, w, h);
  if (channels == 1 && stbi_is_16_bit_from_memory(bytes.data(), int(bytes.size()))) return load_grey16(path, bytes);
  std::unique_ptr<uint8_t, void (*)(void*)> data(stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels, 4), stbi_image_free);
  if (!data) throw FileError(path + ": not a readable image (" + stbi_failure_reason() + ")");
  Image im;  // transparent pixels composed over black, as restr.runtime.transforms.to_rgb
  im.width = w;
  im.height = h;
  im.rgb.resize(size_t(w) * size_t(h) * 3);
  const uint8_t* src = data.get();
  for (size_t i = 0; i < size_t(w) * size_t(h); ++i)
    for (int c = 0; c < 3; ++c) im.rgb[i * 3 + c] = uint8_t((src[i * 4 + c] * src[i * 4 + 3] + 127) / 255);
  return im;
}

void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels) {
  if (!stbi_write_png(path.c_str(), width, height, channels, pixels, width * channels)) throw FileError(path + ": cannot be written");
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
