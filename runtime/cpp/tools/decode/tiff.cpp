#include "tiff.hpp"

#include <tiffio.h>

#include <cstdarg>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>

#include "pixels.hpp"

namespace restr_cli::decode {

namespace {

// libtiff reads the bytes already in memory; its messages are kept per file (no global handler).
struct Source {
  const std::vector<uint8_t>* bytes;
  uint64_t at = 0;
  std::string error;
};

tmsize_t read_bytes(thandle_t h, void* buf, tmsize_t n) {
  auto* s = static_cast<Source*>(h);
  const uint64_t size = s->bytes->size(), left = s->at < size ? size - s->at : 0;
  const uint64_t k = std::min<uint64_t>(left, uint64_t(n));
  if (k) std::memcpy(buf, s->bytes->data() + s->at, k);
  s->at += k;
  return tmsize_t(k);
}
tmsize_t write_bytes(thandle_t, void*, tmsize_t) { return -1; }
toff_t seek(thandle_t h, toff_t off, int whence) {
  auto* s = static_cast<Source*>(h);
  const uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? s->at : s->bytes->size();
  return s->at = base + off;  // unsigned: a negative offset wraps back, as intended
}
int close_source(thandle_t) { return 0; }
toff_t source_size(thandle_t h) { return static_cast<Source*>(h)->bytes->size(); }
int no_map(thandle_t, void**, toff_t*) { return 0; }
void no_unmap(thandle_t, void*, toff_t) {}

int keep_error(TIFF* tif, void* user, const char*, const char* fmt, va_list ap) {
  auto* s = static_cast<Source*>(user);
  if (s->error.empty()) {
    char text[400];
    std::vsnprintf(text, sizeof text, fmt, ap);
    s->error = one_printable_line(text);
    const char* file = tif ? TIFFFileName(tif) : nullptr;  // libtiff's messages may start with it
    if (const std::string name = file ? file : ""; !name.empty() && s->error.rfind(name + ": ", 0) == 0) s->error.erase(0, name.size() + 2);
  }
  return 1;  // handled: nothing on stderr
}
int ignore_warning(TIFF*, void*, const char*, const char*, va_list) { return 1; }

// How Pillow's TiffImagePlugin (its OPEN_INFO table) reads a layout, and how to_rgb then converts it.
enum class Kind { Unread, Grey, GreyAlpha, Rgb, Palette, Cmyk, Stretch };
enum class Alpha { None, Straight, Premultiplied };

struct Layout {
  Kind kind = Kind::Unread;
  Alpha alpha = Alpha::None;
  bool inverted = false;  // MinIsWhite
};

Layout layout_of(uint16_t photometric, uint16_t bps, uint16_t spp, uint16_t format, const uint16_t* extra, uint16_t extras,
                 bool big_endian, uint16_t compression, bool separate, uint16_t fill_order) {
  Layout l;
  // Pillow's table knows bits stored in reverse (FillOrder 2) only for grey, palettes and 8-bit RGB
  const bool order_known = fill_order == FILLORDER_MSB2LSB ||
                           (fill_order == FILLORDER_LSB2MSB && extras == 0 &&
                            ((spp == 1 && bps <= 8 && photometric <= PHOTOMETRIC_PALETTE && photometric != PHOTOMETRIC_RGB) ||
                             (spp == 1 && bps == 16 && photometric == PHOTOMETRIC_MINISBLACK && !big_endian) ||
                             (photometric == PHOTOMETRIC_RGB && spp == 3 && bps == 8)));
  if (!order_known) return l;
  auto alpha_of = [&](uint16_t e) { return e == EXTRASAMPLE_ASSOCALPHA ? Alpha::Premultiplied : e == EXTRASAMPLE_UNASSALPHA ? Alpha::Straight : Alpha::None; };
  auto rest_unspecified = [&](int from) {
    for (int i = from; i < extras; ++i)
      if (extra[i] != EXTRASAMPLE_UNSPECIFIED) return false;
    return true;
  };
  if (photometric == PHOTOMETRIC_MINISWHITE || photometric == PHOTOMETRIC_MINISBLACK) {
    const bool black = photometric == PHOTOMETRIC_MINISBLACK;
    if (spp == 1) {
      if ((format == SAMPLEFORMAT_UINT && (bps == 1 || bps == 2 || bps == 4 || bps == 8)) || (format == SAMPLEFORMAT_INT && bps == 8 && black))
        l.kind = Kind::Grey, l.inverted = !black;
      else if (bps == 16 && ((format == SAMPLEFORMAT_UINT && (black || !big_endian)) || (format == SAMPLEFORMAT_INT && black)))
        l.kind = Kind::Stretch;  // Pillow's I;16 ignores MinIsWhite
      else if (bps == 32 && (format == SAMPLEFORMAT_IEEEFP || (black && (format == SAMPLEFORMAT_INT || (format == SAMPLEFORMAT_UINT && !big_endian)))))
        l.kind = Kind::Stretch;
    } else if (spp == 2 && bps == 8 && black && format == SAMPLEFORMAT_UINT && extras == 1 && extra[0] != EXTRASAMPLE_ASSOCALPHA && !separate) {
      // (in separate planes Pillow loses the alpha plane or refuses the file: not read here)
      l.kind = extra[0] == EXTRASAMPLE_UNASSALPHA ? Kind::GreyAlpha : Kind::Grey;
    }
  } else if (photometric == PHOTOMETRIC_RGB && format == SAMPLEFORMAT_UINT) {
    if (spp == 4 && extras == 0 && (bps == 8 || bps == 16)) {
      l.kind = Kind::Rgb, l.alpha = Alpha::Straight;  // ExtraSamples missing: Pillow takes it for alpha
    } else if (spp >= 3 && extras == spp - 3 && rest_unspecified(1) && (bps == 8 ? spp <= 6 : bps == 16 && spp <= 4)) {
      l.kind = Kind::Rgb, l.alpha = extras ? alpha_of(extra[0]) : Alpha::None;
    }
  } else if (photometric == PHOTOMETRIC_PALETTE && format == SAMPLEFORMAT_UINT && spp == 1 && (bps == 1 || bps == 2 || bps == 4 || bps == 8)) {
    l.kind = Kind::Palette;
  } else if (photometric == PHOTOMETRIC_SEPARATED && format == SAMPLEFORMAT_UINT) {
    if ((bps == 8 && spp >= 4 && spp <= 6 && extras == spp - 4 && rest_unspecified(0)) || (bps == 16 && spp == 4 && extras == 0))
      l.kind = Kind::Cmyk;
  } else if (photometric == PHOTOMETRIC_YCBCR && compression == COMPRESSION_JPEG && bps == 8 && spp == 3 && !separate) {
    l.kind = Kind::Rgb;  // libtiff hands the JPEG's RGB (JPEGCOLORMODE_RGB), as it does to Pillow
  }
  return l;
}

// A tag as the file's first IFD holds it. libtiff rewrites or drops what Pillow reads as written: a
// palette image's Photometric when its colour map is missing or short (it decodes grey instead), and
// Orientation values or types it finds invalid (Pillow rotates by any integer-valued 2-8).
struct RawTag {
  bool present = false;
  bool numeric = false;  // a number type (not BYTE, ASCII or UNDEFINED, which Pillow does not rotate by)
  double value = 0;      // the first value
};

RawTag raw_tag(const std::vector<uint8_t>& b, uint16_t wanted) {
  RawTag tag;
  const bool le = b[0] == 'I', big = (le ? b[2] : b[3]) == 43;
  auto get = [&](uint64_t at, int n) -> uint64_t {  // an n-byte unsigned integer in the file's byte order; 0 past the end
    if (at > b.size() || b.size() - at < uint64_t(n)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(b[at + (le ? i : n - 1 - i)]) << (8 * i);
    return v;
  };
  const uint64_t ifd = big ? get(8, 8) : get(4, 4), entries = big ? get(ifd, 8) : get(ifd, 2);
  const int entry = big ? 20 : 12, inline_bytes = big ? 8 : 4;
  static const int sizes[] = {0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 0, 0, 0, 8, 8, 8};
  for (uint64_t i = 0; i < std::min<uint64_t>(entries, 4096); ++i) {
    const uint64_t at = ifd + (big ? 8 : 2) + i * entry;
    if (get(at, 2) != wanted) continue;
    const uint64_t type = get(at + 2, 2), count = big ? get(at + 4, 8) : get(at + 4, 4);
    const int size = type < std::size(sizes) ? sizes[type] : 0;
    tag.present = true;
    if (!count || !size || type == 1 || type == 2 || type == 6 || type == 7) return tag;
    const uint64_t data = count * size <= uint64_t(inline_bytes) ? at + (big ? 12 : 8) : (big ? get(at + 12, 8) : get(at + 8, 4));
    const uint64_t v = get(data, size);
    tag.numeric = true;
    switch (type) {
      case 5: tag.value = get(data + 4, 4) ? double(uint32_t(v)) / double(get(data + 4, 4)) : 0; break;               // RATIONAL
      case 10: tag.value = get(data + 4, 4) ? double(int32_t(v)) / double(int32_t(get(data + 4, 4))) : 0; break;      // SRATIONAL
      case 8: tag.value = int16_t(v); break;
      case 9: tag.value = int32_t(v); break;
      case 11: { uint32_t u = uint32_t(v); float f; std::memcpy(&f, &u, 4); tag.value = f; break; }
      case 12: { double d; std::memcpy(&d, &v, 8); tag.value = d; break; }
      default: tag.value = double(v);
    }
    return tag;
  }
  return tag;
}

[[noreturn]] void refuse(const std::string& path, const std::string& why) { throw FileError(path + ": not a readable image (" + why + ")"); }

// One plane's bytes (every sample when contiguous), rows `row_bytes` apart, zero where the file has
// no strip or tile (Pillow leaves those black). calloc: pages are touched only as data arrives, so
// a small file that declares a huge image costs little before it fails.
using Bytes = std::unique_ptr<uint8_t, void (*)(void*)>;

Bytes read_plane(TIFF* tif, const std::string& path, Source& src, uint32_t w, uint32_t h, uint16_t plane, size_t row_bytes,
                 size_t pixel_bits) {
  Bytes out(static_cast<uint8_t*>(std::calloc(size_t(h) * row_bytes, 1)), std::free);
  if (!out) refuse(path, "out of memory");
  auto failed = [&]() { refuse(path, src.error.empty() ? "damaged TIFF data" : src.error); };
  auto missing = [&](uint32_t block, uint32_t blocks) { return block < blocks && TIFFGetStrileOffset(tif, block) == 0; };
  if (!TIFFIsTiled(tif)) {
    uint32_t rows_per_strip = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rows_per_strip);
    rows_per_strip = std::max<uint32_t>(1, std::min(rows_per_strip, h));
    for (uint32_t y = 0; y < h; y += rows_per_strip) {
      const uint32_t strip = TIFFComputeStrip(tif, y, plane);
      if (missing(strip, TIFFNumberOfStrips(tif))) continue;
      const size_t want = size_t(std::min(rows_per_strip, h - y)) * row_bytes;
      const tmsize_t got = TIFFReadEncodedStrip(tif, strip, out.get() + size_t(y) * row_bytes, tmsize_t(want));
      if (got < 0) failed();
      if (size_t(got) < want) refuse(path, kTruncated);
    }
    return out;
  }
  uint32_t tw = 0, th = 0;
  TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
  TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
  const uint64_t tile_row = TIFFTileRowSize64(tif), rows = std::min(th, h);  // a tile's rows past the image are not decoded
  if (!tw || !th || !tile_row || tile_row * rows > (uint64_t(1) << 30)) failed();
  std::vector<uint8_t> tile(tile_row * rows);
  for (uint32_t y = 0; y < h; y += th)
    for (uint32_t x = 0; x < w; x += tw) {
      const uint32_t t = TIFFComputeTile(tif, x, y, 0, plane);
      if (missing(t, TIFFNumberOfTiles(tif))) continue;
      const uint32_t used = std::min(th, h - y);
      if (TIFFReadEncodedTile(tif, t, tile.data(), tmsize_t(used * tile_row)) < 0) failed();
      const size_t bits = size_t(std::min(tw, w - x)) * pixel_bits, at = size_t(x) * pixel_bits;  // sub-byte samples: any bit
      for (uint32_t r = 0; r < used; ++r) {
        const uint8_t* from = &tile[size_t(r) * tile_row];
        uint8_t* to = out.get() + size_t(y + r) * row_bytes;
        if (at % 8 == 0 && bits % 8 == 0) {
          std::memcpy(to + at / 8, from, bits / 8);
          continue;
        }
        for (size_t i = 0, o = at; i < bits; ++i, ++o) {
          const int bit = (from[i / 8] >> (7 - i % 8)) & 1;
          to[o / 8] = uint8_t((to[o / 8] & ~(0x80 >> (o % 8))) | (bit << (7 - o % 8)));
        }
      }
    }
  return out;
}

// Sample `c` of pixel `x` in a row of `bps`-bit samples, `n` to a pixel (MSB first; 16-bit ones in
// this machine's order, as libtiff leaves them).
uint32_t sample(const uint8_t* row, size_t x, int c, int n, int bps) {
  const size_t i = x * n + c;
  if (bps == 8) return row[i];
  if (bps == 16) {
    uint16_t v;
    std::memcpy(&v, row + 2 * i, 2);
    return v;
  }
  const size_t bit = i * bps;
  return (row[bit / 8] >> (8 - bps - bit % 8)) & ((1u << bps) - 1);
}

template <typename T>
Image stretch_plane(const uint8_t* data, uint32_t w, uint32_t h) {
  std::vector<T> values(size_t(w) * h);  // aligned, as the samples in the plane need not be
  std::memcpy(values.data(), data, values.size() * sizeof(T));
  return stretch_grey(values.data(), int(w), int(h));
}

}  // namespace

bool is_tiff(const std::vector<uint8_t>& b) {
  if (b.size() < 4) return false;
  const bool le = b[0] == 'I' && b[1] == 'I' && b[3] == 0, be = b[0] == 'M' && b[1] == 'M' && b[2] == 0;
  return (le && (b[2] == 42 || b[2] == 43)) || (be && (b[3] == 42 || b[3] == 43));  // classic TIFF or BigTIFF
}

Image decode_tiff(const std::string& path, const std::vector<uint8_t>& bytes, int& orientation) {
  Source src{&bytes, 0, {}};
  std::unique_ptr<TIFFOpenOptions, void (*)(TIFFOpenOptions*)> options(TIFFOpenOptionsAlloc(), TIFFOpenOptionsFree);
  TIFFOpenOptionsSetErrorHandlerExtR(options.get(), keep_error, &src);
  TIFFOpenOptionsSetWarningHandlerExtR(options.get(), ignore_warning, &src);
  TIFFOpenOptionsSetMaxSingleMemAlloc(options.get(), tmsize_t(1) << 30);
  std::unique_ptr<TIFF, void (*)(TIFF*)> tif(TIFFClientOpenExt(path.c_str(), "rm", &src, read_bytes, write_bytes, seek, close_source,
                                                               source_size, no_map, no_unmap, options.get()),
                                             TIFFClose);
  if (!tif) refuse(path, src.error.empty() ? "damaged TIFF header" : src.error);
  TIFF* t = tif.get();
  uint32_t w = 0, h = 0;
  uint16_t bps = 1, spp = 1, format = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG, photometric = 0, compression = 1, extras = 0;
  uint16_t* extra = nullptr;
  TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
  TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
  check_size(path, w, h);
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &format);
  TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &planar);
  TIFFGetFieldDefaulted(t, TIFFTAG_COMPRESSION, &compression);
  TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photometric);
  TIFFGetField(t, TIFFTAG_EXTRASAMPLES, &extras, &extra);
  const bool separate = planar == PLANARCONFIG_SEPARATE && spp > 1;
  if (const RawTag written = raw_tag(bytes, TIFFTAG_PHOTOMETRIC); written.numeric && written.value == PHOTOMETRIC_PALETTE && photometric != PHOTOMETRIC_PALETTE)
    refuse(path, "a palette TIFF without a usable colour map");
  uint16_t fill_order = FILLORDER_MSB2LSB;
  TIFFGetFieldDefaulted(t, TIFFTAG_FILLORDER, &fill_order);
  const Layout layout = layout_of(photometric, bps, spp, format, extra, extras, TIFFIsBigEndian(t), compression, separate, fill_order);
  if (layout.kind == Kind::Unread)
    refuse(path, "a TIFF of photometric " + std::to_string(photometric) + ", " + std::to_string(spp) + " samples of " + std::to_string(bps) +
                     " bits (format " + std::to_string(format) + ", fill order " + std::to_string(fill_order) + ") that restr-predict-cpp does not read");

  // Pillow: the Orientation tag when there is one (whatever its value), else XMP's.
  uint32_t xmp_size = 0;
  void* xmp = nullptr;
  const RawTag tag = raw_tag(bytes, TIFFTAG_ORIENTATION);
  const bool turns = tag.numeric && tag.value >= 1 && tag.value <= 8 && tag.value == double(int(tag.value));
  orientation = tag.present ? (turns ? int(tag.value) : 1)
                            : orientation_of(0, TIFFGetField(t, TIFFTAG_XMLPACKET, &xmp_size, &xmp) && xmp ? xmp_orientation(static_cast<uint8_t*>(xmp), xmp_size) : 0);

  if (photometric == PHOTOMETRIC_YCBCR && !TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB)) refuse(path, "damaged TIFF JPEG data");
  const int per_plane = separate ? 1 : spp;
  const size_t pixel_bits = size_t(per_plane) * bps, row_bytes = (size_t(w) * pixel_bits + 7) / 8;
  std::vector<Bytes> planes;
  for (uint16_t p = 0; p < (separate ? spp : 1); ++p) planes.push_back(read_plane(t, path, src, w, h, p, row_bytes, pixel_bits));

  if (layout.kind == Kind::Stretch) {
    if (format == SAMPLEFORMAT_IEEEFP) return stretch_plane<float>(planes[0].get(), w, h);
    if (bps == 32) return stretch_plane<int32_t>(planes[0].get(), w, h);  // Pillow's mode I, unsigned ones too
    return format == SAMPLEFORMAT_INT ? stretch_plane<int16_t>(planes[0].get(), w, h) : stretch_plane<uint16_t>(planes[0].get(), w, h);
  }
  uint16_t *red = nullptr, *green = nullptr, *blue = nullptr;
  if (layout.kind == Kind::Palette && !TIFFGetField(t, TIFFTAG_COLORMAP, &red, &green, &blue)) refuse(path, "a palette TIFF without its colour map");

  Image im;
  im.width = int(w);
  im.height = int(h);
  im.rgb.resize(size_t(w) * h * 3);
  const int high = bps == 16 ? 8 : 0;  // Pillow keeps a 16-bit sample's high byte
  const uint32_t top = (1u << bps) - 1;
  std::vector<uint8_t> ink(size_t(w) * 4);
  for (uint32_t y = 0; y < h; ++y) {
    auto get = [&](uint32_t x, int c) -> uint32_t {
      return separate ? sample(planes[c].get() + size_t(y) * row_bytes, x, 0, 1, bps) : sample(planes[0].get() + size_t(y) * row_bytes, x, c, spp, bps);
    };
    uint8_t* out = &im.rgb[size_t(y) * w * 3];
    for (uint32_t x = 0; x < w; ++x, out += 3) {
      switch (layout.kind) {
        case Kind::Grey:
        case Kind::GreyAlpha: {
          uint32_t g = get(x, 0) * 255 / top;  // 1, 2 and 4 bits scaled exactly (x255, x85, x17)
          if (layout.inverted) g = 255 - g;
          if (layout.kind == Kind::GreyAlpha) g = (g * get(x, 1) + 127) / 255;
          out[0] = out[1] = out[2] = uint8_t(g);
          break;
        }
        case Kind::Rgb: {
          const uint32_t a = layout.alpha == Alpha::None ? 255 : get(x, 3) >> high;
          for (int c = 0; c < 3; ++c) {
            uint32_t v = get(x, c) >> high;
            if (layout.alpha == Alpha::Premultiplied) v = a == 0 ? 0 : a == 255 ? v : std::min<uint32_t>(255, v * 255 / a);  // Pillow's RGBa unpacking
            out[c] = uint8_t(layout.alpha == Alpha::None ? v : (v * a + 127) / 255);
          }
          break;
        }
        case Kind::Palette: {
          const uint32_t i = get(x, 0);
          out[0] = uint8_t(red[i] >> 8), out[1] = uint8_t(green[i] >> 8), out[2] = uint8_t(blue[i] >> 8);  // Pillow: entry // 256
          break;
        }
        case Kind::Cmyk:
          for (int c = 0; c < 4; ++c) ink[size_t(x) * 4 + c] = uint8_t(255 - (get(x, c) >> high));  // cmyk_to_rgb takes them inverted
          break;
        default:
          break;
      }
    }
    if (layout.kind == Kind::Cmyk) cmyk_to_rgb(ink.data(), &im.rgb[size_t(y) * w * 3], int(w));
  }
  return im;
}

}  // namespace restr_cli::decode
