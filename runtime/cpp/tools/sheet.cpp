#include "sheet.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

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

// Pillow's Image.resize(size, BILINEAR), which restr-predict's sheet uses (libImaging/Resample.c):
// a separable triangle filter whose support widens with the reduction (every source pixel under an
// output pixel counts), weights normalised per output pixel and applied in 22-bit fixed point, one
// pass per axis whose size changes, through an 8-bit intermediate. stb_image_resize 0.97 (Debian's)
// asserts on some reductions (451x300 to 320x213: stb's weights for a pixel sum past 1.1), so the
// host keeps its own.
struct Taps {
  int first = 0, count = 0;  // source pixels first .. first + count - 1
  std::vector<int32_t> weights;
};
constexpr int kBits = 22;  // Pillow's PRECISION_BITS for 8-bit samples

std::vector<Taps> taps(int in, int out) {
  const double scale = double(in) / out, widen = std::max(1.0, scale), support = widen, narrow = 1.0 / widen;  // the triangle's support is 1
  std::vector<Taps> all(static_cast<size_t>(out));
  for (int o = 0; o < out; ++o) {
    const double center = (o + 0.5) * scale;
    Taps& t = all[size_t(o)];
    t.first = std::max(0, int(center - support + 0.5));
    t.count = std::min(in, int(center + support + 0.5)) - t.first;
    std::vector<double> w(size_t(std::max(0, t.count)));
    double sum = 0;
    for (int i = 0; i < t.count; ++i) sum += w[size_t(i)] = std::max(0.0, 1.0 - std::fabs((t.first + i - center + 0.5) * narrow));
    for (double v : w) {
      const double fixed = (sum != 0 ? v / sum : v) * (1 << kBits);
      t.weights.push_back(int32_t(fixed < 0 ? fixed - 0.5 : fixed + 0.5));
    }
  }
  return all;
}

// One pass along x (`along_x`) or y with `all` taps: `src` is w x h pixels of `channels` bytes, the
// result n x h or w x n.
std::vector<uint8_t> scale_axis(const std::vector<uint8_t>& src, int w, int h, int channels, const std::vector<Taps>& all, bool along_x) {
  const int n = int(all.size()), ow = along_x ? n : w, oh = along_x ? h : n;
  const size_t step = along_x ? size_t(channels) : size_t(w) * channels;  // from one source pixel to the next along the axis
  std::vector<uint8_t> out(size_t(ow) * oh * channels);
  for (int y = 0; y < oh; ++y)
    for (int x = 0; x < ow; ++x) {
      const Taps& t = all[size_t(along_x ? x : y)];
      const uint8_t* first = &src[(along_x ? size_t(y) * w + t.first : size_t(t.first) * w + x) * channels];
      for (int c = 0; c < channels; ++c) {
        int64_t acc = 1 << (kBits - 1);
        for (int i = 0; i < t.count; ++i) acc += int64_t(first[size_t(i) * step + c]) * t.weights[size_t(i)];
        out[(size_t(y) * ow + x) * channels + c] = uint8_t(std::clamp<int64_t>(acc >> kBits, 0, 255));
      }
    }
  return out;
}

// Images of w x h scaled to tw x th, the taps computed once for the photo and each mask.
struct Resize {
  int w, h, tw, th;
  std::vector<Taps> along_x, along_y;
  // ImagingResampleInner's order: columns first when the height shrinks by more than twice as many
  // pixels as the width (Pillow 13), else rows first.
  bool columns_first;

  Resize(int w, int h, int tw, int th)
      : w(w), h(h), tw(tw), th(th), along_x(taps(w, tw)), along_y(taps(h, th)), columns_first(h - th > 0 && h - th > (w - tw) * 2) {}

  std::vector<uint8_t> operator()(const std::vector<uint8_t>& src, int channels) const {
    if (columns_first) {
      std::vector<uint8_t> cols = th == h ? src : scale_axis(src, w, h, channels, along_y, false);
      return tw == w ? cols : scale_axis(cols, w, th, channels, along_x, true);
    }
    std::vector<uint8_t> rows = tw == w ? src : scale_axis(src, w, h, channels, along_x, true);
    return th == h ? rows : scale_axis(rows, tw, h, channels, along_y, false);
  }
};

}  // namespace

Image contact_sheet(const Image& image, const std::vector<const uint8_t*>& masks, const std::vector<std::string>& captions, int tile) {
  const double scale = double(tile) / std::max(image.width, image.height);
  const int tw = std::max(1, int(std::nearbyint(image.width * scale))), th = std::max(1, int(std::nearbyint(image.height * scale)));
  const Resize resize(image.width, image.height, tw, th);
  Image photo;  // the tiles' photo: the overlay is drawn at the tile's size
  photo.width = tw, photo.height = th, photo.rgb = resize(image.rgb, 3);
  const int n = int(masks.size()), cols = std::min(4, std::max(1, n)), rows = (n + cols - 1) / cols;
  Image sheet;
  sheet.width = cols * (tw + 8) + 8;
  sheet.height = rows * (th + 2 * kLine + 12) + 8;
  sheet.rgb.assign(size_t(sheet.width) * sheet.height * 3, 255);
  for (int k = 0; k < n; ++k) {
    const int x = 8 + (k % cols) * (tw + 8), y = 8 + (k / cols) * (th + 2 * kLine + 12);
    std::vector<uint8_t> mask(size_t(image.width) * image.height);  // the 0/255 mask, scaled as the photo, kept where >= 128
    std::transform(masks[k], masks[k] + mask.size(), mask.begin(), [](uint8_t m) { return uint8_t(m ? 255 : 0); });
    mask = resize(mask, 1);
    for (uint8_t& m : mask) m = m >= 128;
    const std::vector<uint8_t> small = overlay(photo, mask.data());
    for (int r = 0; r < th; ++r) std::copy_n(&small[size_t(r) * tw * 3], tw * 3, &sheet.rgb[(size_t(y + r) * sheet.width + x) * 3]);
    std::vector<std::string> lines = wrap(printable(captions[k]), tw);
    for (size_t i = 0; i < lines.size() && i < 2; ++i) draw_text(sheet, x, y + th + 4 + int(i) * kLine, lines[i]);
  }
  return sheet;
}

}  // namespace restr_cli
