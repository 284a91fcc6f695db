#include "decode.hpp"
#include "pixels.hpp"
#include "tiff.hpp"

#include <jpeglib.h>
#include <jerror.h>
#include <libexif/exif-data.h>
#include <netpbm/pam.h>
#include <webp/demux.h>
#include <zlib.h>
#include <stb/stb_image.h>

#include <algorithm>
#include <csetjmp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

namespace restr_cli::decode {

namespace {

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FileError(path + ": no such file");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// stb_image's reason for a refusal, never empty (a PNG cut after its last image data has none).
std::string stb_reason() {
  const char* reason = stbi_failure_reason();
  return one_printable_line(reason && *reason ? reason : "damaged or truncated data");  // some quote a chunk type
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
};

// The orientation tag in an EXIF block ("Exif\0\0" and a TIFF header, or the TIFF header alone, as
// WebP stores it), through libexif: 1-8, 1 for a value exif_transpose ignores, 0 when there is none.
int exif_orientation(const uint8_t* data, size_t size) {
  std::vector<uint8_t> block;
  if (size < 6 || std::memcmp(data, "Exif\0\0", 6) != 0) {  // libexif looks for the APP1 header
    block.assign({'E', 'x', 'i', 'f', 0, 0});
    block.insert(block.end(), data, data + size);
    data = block.data();
    size = block.size();
  }
  std::unique_ptr<ExifData, void (*)(ExifData*)> exif(exif_data_new_from_data(data, unsigned(size)), exif_data_unref);
  if (!exif) return 0;
  if (ExifEntry* e = exif_data_get_entry(exif.get(), EXIF_TAG_ORIENTATION))
    if (e->format == EXIF_FORMAT_SHORT && e->components >= 1) {
      int o = exif_get_short(e->data, exif_data_get_byte_order(exif.get()));
      return o >= 1 && o <= 8 ? o : 1;
    }
  return 0;
}

// A JPEG's orientation: its first EXIF APP1 marker's (as Pillow), else its XMP APP1 marker's.
int jpeg_orientation(jpeg_decompress_struct& cinfo) {
  static const char xmp[] = "http://ns.adobe.com/xap/1.0/";  // with its NUL: the XMP marker's header
  int exif = 0, from_xmp = 0;
  bool exif_seen = false;
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker != JPEG_APP0 + 1) continue;
    if (!exif_seen && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      exif_seen = true;
      exif = exif_orientation(m->data, m->data_length);
    }
    if (m->data_length >= sizeof xmp && std::memcmp(m->data, xmp, sizeof xmp) == 0) from_xmp = xmp_orientation(m->data, m->data_length);
  }
  return orientation_of(exif, from_xmp);
}

// libjpeg(-turbo) with its default (ISLOW, fancy upsampling) decoding, as Pillow decodes JPEG.
Image decode_jpeg(const std::string& path, const std::vector<uint8_t>& bytes, int& orientation) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = [](j_common_ptr c) { longjmp(reinterpret_cast<JpegError*>(c->err)->jump, 1); };
  // Warnings ("Corrupt JPEG data: ...") are silent, as in Pillow; but the data running out before the
  // last row, which libjpeg pads with grey, is an error there ("image file is truncated"), as it is
  // here. After the last row Pillow reads no further (a missing end marker is no matter), nor do we.
  err.mgr.emit_message = [](j_common_ptr c, int level) {
    const auto d = reinterpret_cast<j_decompress_ptr>(c);
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF && (d->output_height == 0 || d->output_scanline < d->output_height))
      longjmp(reinterpret_cast<JpegError*>(c->err)->jump, 1);
  };
  Image im;
  std::vector<uint8_t> ink;  // a CMYK row; here, before setjmp, so that an error's longjmp frees it too
  if (setjmp(err.jump)) {
    char msg[JMSG_LENGTH_MAX];
    if (err.mgr.msg_code != JWRN_JPEG_EOF) err.mgr.format_message(reinterpret_cast<j_common_ptr>(&cinfo), msg);
    jpeg_destroy_decompress(&cinfo);
    throw FileError(path + ": not a readable image (" + (err.mgr.msg_code == JWRN_JPEG_EOF ? kTruncated : msg) + ")");
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
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  orientation = jpeg_orientation(cinfo);
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  im.width = int(cinfo.output_width);
  im.height = int(cinfo.output_height);
  im.rgb.resize(size_t(im.width) * im.height * 3);
  ink.resize(cmyk ? size_t(im.width) * 4 : 0);
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* rgb = im.rgb.data() + size_t(cinfo.output_scanline) * im.width * 3;
    JSAMPROW row = cmyk ? ink.data() : rgb;
    jpeg_read_scanlines(&cinfo, &row, 1);
    if (cmyk) cmyk_to_rgb(ink.data(), rgb, im.width);
  }
  jpeg_destroy_decompress(&cinfo);  // not jpeg_finish_decompress: it reads on to the end marker
  return im;
}

Image load_grey16(const std::string& path, const std::vector<uint8_t>& bytes) {
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<uint16_t, void (*)(void*)> data(stbi_load_16_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels, 1),
                                                  stbi_image_free);
  if (!data) throw FileError(path + ": not a readable image (" + stb_reason() + ")");
  return stretch_grey(data.get(), w, h);
}

// PBM, PGM and PPM (P1-P6, plain and raw) through libnetpbm. Its errors longjmp out of the library
// (pm_setjmpbuf), so each call into it sits in a function with only trivially destructible locals.
// libnetpbm's jump target and message are process-wide: the CLI decodes one image at a time.
char g_netpbm_error[512];
jmp_buf* g_netpbm_saved = nullptr;  // the jump target before ours (static: set after setjmp, read after longjmp)

void netpbm_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    pm_init("restr-predict-cpp", 0);
    pm_setusererrormsgfn([](const char* msg) { std::snprintf(g_netpbm_error, sizeof g_netpbm_error, "%s", msg); });
    pm_setusermessagefn([](const char*) {});  // no chatter on stderr
  });
}

// The header; false (and g_netpbm_error) when libnetpbm refuses it.
bool pnm_header(FILE* file, struct pam* pam) {
  jmp_buf jump;
  if (setjmp(jump)) {
    pm_setjmpbuf(g_netpbm_saved);
    return false;
  }
  pm_setjmpbufsave(&jump, &g_netpbm_saved);
  pnm_readpaminit(file, pam, PAM_STRUCT_SIZE(tuple_type));
  pm_setjmpbuf(g_netpbm_saved);
  return true;
}

// Every sample, row by row, into `out` (height * width * depth); false when the raster is bad.
bool pnm_samples(struct pam* pam, uint16_t* out) {
  jmp_buf jump;
  tuple* volatile row = nullptr;
  if (setjmp(jump)) {
    pm_setjmpbuf(g_netpbm_saved);
    if (row) pnm_freepamrow(row);
    return false;
  }
  pm_setjmpbufsave(&jump, &g_netpbm_saved);
  row = pnm_allocpamrow(pam);
  for (int y = 0; y < pam->height; ++y) {
    pnm_readpamrow(pam, row);
    for (int x = 0; x < pam->width; ++x)
      for (unsigned d = 0; d < pam->depth; ++d) out[(size_t(y) * pam->width + x) * pam->depth + d] = uint16_t(row[x][d]);
  }
  pnm_freepamrow(row);
  pm_setjmpbuf(g_netpbm_saved);
  return true;
}

// Bytes [from, to) as Pillow's PNM parser takes a header or a plain (ASCII) raster, up to its first
// `count` numbers (Pillow never reads past a raster's last): decimal numbers, whitespace and # comments
// only. libnetpbm ends a number at any other byte and reads on, where Python's int() refuses the token.
bool decimal_tokens_ok(const std::vector<uint8_t>& bytes, size_t from, size_t to, size_t count) {
  auto space = [](uint8_t c) { return std::memchr(" \t\n\r\v\f", c, 6) != nullptr; };  // not strchr: it finds NUL
  size_t i = from, seen = 0;
  while (i < to && seen < count) {
    if (space(bytes[i])) {
      ++i;
    } else if (bytes[i] == '#') {
      while (i < to && bytes[i] != '\n' && bytes[i] != '\r') ++i;
    } else {
      for (; i < to && !space(bytes[i]) && bytes[i] != '#'; ++i)
        if (bytes[i] < '0' || bytes[i] > '9') return false;
      ++seen;
    }
  }
  return true;
}

// As Pillow's PpmImagePlugin, then restr.runtime.transforms.to_rgb: bitmaps black and white; maxval up
// to 255 scaled to 255, greyscale above it scaled to 65535 (mode I) then stretched, colour above it
// scaled to 255; each scaling min(top, round(v / maxval * top)), half to even as Python's round.
// libnetpbm reads the header, the bitmaps and the plain (ASCII) rasters; a raw PGM or PPM raster is
// read here, as Pillow does, so that a sample above the maxval is clamped (libnetpbm refuses it).
Image load_pnm(const std::string& path, std::vector<uint8_t>& bytes) {
  netpbm_init();
  if (bytes[1] <= '3') bytes.push_back('\n');  // libnetpbm needs a byte after a plain file's last number; Pillow does not
  std::unique_ptr<FILE, int (*)(FILE*)> file(fmemopen(bytes.data(), bytes.size(), "rb"), std::fclose);
  if (!file) throw FileError(path + ": cannot be read");
  struct pam pam;
  auto refused = [&] { return FileError(path + ": not a readable image (" + g_netpbm_error + ")"); };
  if (!pnm_header(file.get(), &pam)) throw refused();
  check_size(path, pam.width, pam.height);
  if (pam.depth != 1 && pam.depth != 3) throw FileError(path + ": not a readable image (a PNM of depth " + std::to_string(pam.depth) + ")");
  const size_t n = size_t(pam.width) * size_t(pam.height), count = n * pam.depth;
  const size_t raster = size_t(std::ftell(file.get()));
  if (!decimal_tokens_ok(bytes, 2, raster, SIZE_MAX)) throw FileError(path + ": not a readable image (a PNM header holds something other than decimal numbers)");
  std::vector<uint16_t> samples(count);
  const bool raw = pam.format == RPGM_FORMAT || pam.format == RPPM_FORMAT;
  if (raw) {
    const size_t width = pam.maxval > 255 ? 2 : 1;  // bytes a sample, big-endian
    if (bytes.size() - raster < count * width) throw FileError(path + ": not a readable image (" + kTruncated + ")");
    for (size_t i = 0; i < count; ++i)
      samples[i] = width == 1 ? bytes[raster + i] : uint16_t(bytes[raster + 2 * i] << 8 | bytes[raster + 2 * i + 1]);
  } else {
    if ((pam.format == PGM_FORMAT || pam.format == PPM_FORMAT) && !decimal_tokens_ok(bytes, raster, bytes.size(), count))
      throw FileError(path + ": not a readable image (a plain PNM raster holds something other than decimal numbers)");
    if (!pnm_samples(&pam, samples.data())) throw refused();
  }
  const double maxval = double(pam.maxval);
  auto scaled = [&](uint16_t v, double top) { return std::min(top, std::nearbyint(v / maxval * top)); };
  const bool grey = pam.depth == 1;
  if (grey && pam.maxval > 255) {
    std::vector<uint32_t> wide(n);
    for (size_t i = 0; i < n; ++i) wide[i] = pam.maxval == 65535 ? samples[i] : uint32_t(scaled(samples[i], 65535.0));
    return stretch_grey(wide.data(), pam.width, pam.height);
  }
  Image im;
  im.width = pam.width;
  im.height = pam.height;
  im.rgb.resize(n * 3);
  for (size_t i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c) {
      const uint16_t v = samples[i * pam.depth + (grey ? 0 : c)];
      im.rgb[i * 3 + c] = pam.maxval == 255 ? uint8_t(v) : uint8_t(scaled(v, 255.0));
    }
  return im;
}

bool is_png(const std::vector<uint8_t>& b) {
  static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return b.size() >= 8 && std::memcmp(b.data(), signature, 8) == 0;
}

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

// A PNG's orientation: its eXIf chunk's (before or after the image data: Pillow's exif_transpose loads
// the whole file), else that of its XMP (an iTXt chunk "XML:com.adobe.xmp"); 1 when there is none.
int png_orientation(const std::vector<uint8_t>& bytes) {
  static const char xmp[] = "XML:com.adobe.xmp";  // with its NUL: the iTXt keyword
  if (!is_png(bytes)) return 1;
  int exif = 0, from_xmp = 0;
  for (size_t at = 8; at + 12 <= bytes.size();) {
    const size_t length = be32(&bytes[at]);
    if (length > bytes.size() - at - 12) break;  // a damaged chunk: stb has read what it could
    const uint8_t* data = &bytes[at + 8];
    if (std::memcmp(&bytes[at + 4], "eXIf", 4) == 0 && !exif) exif = exif_orientation(data, length);
    if (std::memcmp(&bytes[at + 4], "iTXt", 4) == 0 && length >= sizeof xmp && std::memcmp(data, xmp, sizeof xmp) == 0)
      from_xmp = xmp_orientation(data, length);
    if (std::memcmp(&bytes[at + 4], "IEND", 4) == 0) break;
    at += length + 12;
  }
  return orientation_of(exif, from_xmp);
}

// Little-endian fields of a file's header (0 past the end).
struct Fields {
  const std::vector<uint8_t>& b;
  unsigned u8(size_t at) const { return at < b.size() ? b[at] : 0u; }
  unsigned u16(size_t at) const { return u8(at) | u8(at + 1) << 8; }
  uint32_t u32(size_t at) const { return u16(at) | uint32_t(u16(at + 2)) << 16; }
};

// A BMP's file and info headers (OS/2's 12-byte one or Windows' 40 bytes and more), read once.
struct BmpHeader {
  bool bmp = false;                 // starts with "BM"
  uint32_t size = 0, offset = 0;    // the info header's size; where the pixels start
  bool os2 = false;
  int64_t width = 0, height = 0;    // height < 0: rows top-down
  unsigned bits = 0;
  uint32_t compression = 0;         // 0 none, 3 bit fields (OS/2: none)
  uint32_t colours = 0;             // biClrUsed (0: 2^bits)
  explicit BmpHeader(const std::vector<uint8_t>& b) {
    const Fields f{b};
    bmp = b.size() >= 2 && b[0] == 'B' && b[1] == 'M';
    size = f.u32(14);
    offset = f.u32(10);
    os2 = size == 12;
    width = os2 ? f.u16(18) : int32_t(f.u32(18));
    height = os2 ? f.u16(20) : int32_t(f.u32(22));
    bits = os2 ? f.u16(24) : f.u16(28);
    compression = os2 ? 0 : f.u32(30);
    colours = os2 ? 0 : f.u32(46);
  }
};

// What Pillow refuses in a file stb_image would read: stb reads past the end of a BMP, TGA or GIF as
// zeros, where Pillow says "image file is truncated"; and Pillow reads BMP bit fields of its own
// layouts only, and palettes of up to 256 colours. Empty when the file is fine by Pillow (as far as
// stb's formats go).
std::string pillow_refusal(const std::vector<uint8_t>& b, const BmpHeader& bmp) {
  const Fields f{b};
  if (bmp.bmp) {
    const uint32_t header = bmp.size;
    if (b.size() < 18 || header > b.size() - 18) return "Truncated File Read";  // Pillow reads the header whole
    static const uint32_t headers[] = {12, 40, 52, 56, 64, 108, 124};
    if (std::find(std::begin(headers), std::end(headers), header) == std::end(headers))
      return "Unsupported BMP header type (" + std::to_string(header) + ")";
    const int64_t w = bmp.width, h = bmp.height;
    const unsigned bits = bmp.bits;
    const uint32_t compression = bmp.compression;
    if (compression == 3) {  // Pillow's BmpImagePlugin SUPPORTED layouts: red, green, blue (and alpha at 32 bits)
      static const uint32_t layouts[][5] = {
          {32, 0xFF0000, 0xFF00, 0xFF, 0},          {32, 0xFF000000, 0xFF0000, 0xFF00, 0},  {32, 0xFF000000, 0xFF00, 0xFF, 0},
          {32, 0xFF000000, 0xFF0000, 0xFF00, 0xFF}, {32, 0xFF, 0xFF00, 0xFF0000, 0xFF000000}, {32, 0xFF0000, 0xFF00, 0xFF, 0xFF000000},
          {32, 0xFF000000, 0xFF00, 0xFF, 0xFF0000}, {32, 0, 0, 0, 0},                     {24, 0xFF0000, 0xFF00, 0xFF, 0},
          {16, 0xF800, 0x7E0, 0x1F, 0},             {16, 0x7C00, 0x3E0, 0x1F, 0}};
      const uint32_t alpha = bits == 32 && header >= 56 ? f.u32(66) : 0;  // Pillow reads alpha masks at 32 bits only
      const bool known = std::any_of(std::begin(layouts), std::end(layouts), [&](const uint32_t* l) {
        return l[0] == bits && l[1] == f.u32(54) && l[2] == f.u32(58) && l[3] == f.u32(62) && l[4] == alpha;
      });
      if (!known) return "Unsupported BMP bitfields layout";
    }
    if (bits <= 8 && bmp.colours > 256) return "invalid palette size";  // Pillow's P images hold 256 colours
    if ((compression == 0 || compression == 3) && w > 0 && bits > 0) {  // rows padded to 4 bytes
      const uint64_t row = (uint64_t(w) * bits + 31) / 32 * 4, rows = uint64_t(h < 0 ? -h : h);
      if (rows && uint64_t(bmp.offset) + row * (rows - 1) + (uint64_t(w) * bits + 7) / 8 > b.size()) return kTruncated;  // the last row's padding may be missing
    }
    return "";
  }
  if (b.size() >= 6 && (std::memcmp(b.data(), "GIF87a", 6) == 0 || std::memcmp(b.data(), "GIF89a", 6) == 0)) {
    // the blocks up to the end of the first image's data (the frame Pillow and stb read)
    size_t at = 13 + (f.u8(10) & 0x80 ? 3u * (2u << (f.u8(10) & 7)) : 0u);
    auto sub_blocks = [&] {  // false when a sub-block runs past the end (one ending at the end is stb's call)
      while (at < b.size() && b[at] != 0) at += 1 + b[at];
      return at++ <= b.size();
    };
    while (at < b.size()) {
      if (b[at] == 0x21) {  // extension: label, then sub-blocks
        at += 2;
        if (!sub_blocks()) return kTruncated;
      } else if (b[at] == 0x2C) {  // image: descriptor, local colour table, code size, sub-blocks
        const unsigned flags = f.u8(at + 9);
        at += 10 + (flags & 0x80 ? 3u * (2u << (flags & 7)) : 0u) + 1;
        return sub_blocks() ? "" : kTruncated;
      } else {
        return "";  // the trailer, or something stb judges itself
      }
    }
    return kTruncated;
  }
  return "";
}

// The bytes a PNG's zlib stream inflates to: each (Adam7: each pass's) row of filtered samples with
// its filter byte; 0 when the header is not one.
uint64_t png_raw_size(const std::vector<uint8_t>& b) {
  if (b.size() < 33 || std::memcmp(&b[12], "IHDR", 4) != 0) return 0;
  const uint64_t w = be32(&b[16]), h = be32(&b[20]);
  const unsigned depth = b[24], type = b[25], interlaced = b[28];
  const unsigned channels = type == 0 ? 1 : type == 2 ? 3 : type == 3 ? 1 : type == 4 ? 2 : type == 6 ? 4 : 0;
  auto rows = [&](uint64_t pw, uint64_t ph) { return pw && ph ? ph * (1 + (pw * channels * depth + 7) / 8) : 0; };
  if (!interlaced) return rows(w, h);
  static const unsigned adam7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  uint64_t total = 0;  // pass p holds the pixels at x0 + k * dx, y0 + k * dy
  for (const auto& p : adam7) total += rows((w + p[2] - 1 - p[0]) / p[2], (h + p[3] - 1 - p[1]) / p[3]);
  return total;
}

// A PNG as Pillow decodes it, for stb_image: the chunks before the image data as they are (each CRC
// checked, as Pillow checks them), the image data inflated by zlib up to its last row and stored again
// in one IDAT, then IEND. Pillow reads no further than the last row; stb checks no CRC nor the zlib
// stream, and judges what follows (a damaged block past the last row, an unknown chunk, no IEND).
// Sets `refusal` (Pillow's words) for a PNG Pillow refuses; returns the file itself where stb judges.
std::vector<uint8_t> png_as_pillow_reads(const std::string& path, const std::vector<uint8_t>& b, std::string& refusal) {
  if (!is_png(b) || png_raw_size(b) == 0) return b;
  std::vector<uint8_t> head(b.begin(), b.begin() + 8), raw;
  z_stream z{};
  if (inflateInit(&z) != Z_OK) return b;
  std::unique_ptr<z_stream, int (*)(z_stream*)> done(&z, inflateEnd);
  bool image_data = false;
  for (size_t at = 8; at + 8 <= b.size() && !(image_data && z.avail_out == 0);) {  // to the last row
    const size_t length = be32(&b[at]);
    const uint8_t* type = &b[at + 4];
    const bool idat = std::memcmp(type, "IDAT", 4) == 0;
    if (image_data && !idat) break;
    const size_t have = std::min(length, b.size() - at - 8);
    if (idat && !image_data) {  // the header chunks passed (as in Pillow, checksums first): the size, then memory
      check_size(path, be32(&b[16]), be32(&b[20]));  // stb_info may not have: it refuses some sizes itself
      raw.resize(png_raw_size(b));
      z.next_out = raw.data();
      z.avail_out = unsigned(raw.size());
    }
    if (idat) {
      image_data = true;
      z.next_in = const_cast<uint8_t*>(&b[at + 8]);
      z.avail_in = unsigned(have);
      while (z.avail_in > 0 && z.avail_out > 0) {
        const int rc = inflate(&z, Z_NO_FLUSH);
        if (rc == Z_STREAM_END) break;
        if (rc != Z_OK) return refusal = "broken data stream when reading image file", b;
      }
    } else {
      if (at + 12 + length > b.size()) return b;  // a header chunk cut short: stb says so, as Pillow
      if (uint32_t(crc32(crc32(0, type, 4), &b[at + 8], unsigned(length))) != be32(&b[at + 8 + length])) {
        std::string name;  // as Python's repr of the chunk type
        for (int i = 0; i < 4; ++i) {
          char hex[5];
          std::snprintf(hex, sizeof hex, "\\x%02x", type[i]);
          name += type[i] >= 0x20 && type[i] < 0x7F && type[i] != '\'' && type[i] != '\\' ? std::string(1, char(type[i])) : std::string(hex);
        }
        return refusal = "broken PNG file (bad header checksum in b'" + name + "')", b;
      }
      head.insert(head.end(), b.begin() + at, b.begin() + at + 12 + length);
    }
    at += 12 + length;
  }
  if (!image_data) return b;
  if (z.avail_out > 0) return refusal = kTruncated, b;
  std::vector<uint8_t> stored(compressBound(uLong(raw.size())));
  uLongf size = uLongf(stored.size());
  if (compress2(stored.data(), &size, raw.data(), uLong(raw.size()), 0) != Z_OK) return b;  // level 0: stored, no work
  auto chunk = [&](const char* kind, const uint8_t* data, size_t n) {
    const uint8_t len[4] = {uint8_t(n >> 24), uint8_t(n >> 16), uint8_t(n >> 8), uint8_t(n)};
    head.insert(head.end(), len, len + 4);
    head.insert(head.end(), kind, kind + 4);
    head.insert(head.end(), data, data + n);
    const uint32_t crc = uint32_t(crc32(crc32(0, reinterpret_cast<const uint8_t*>(kind), 4), data, unsigned(n)));
    const uint8_t c[4] = {uint8_t(crc >> 24), uint8_t(crc >> 16), uint8_t(crc >> 8), uint8_t(crc)};
    head.insert(head.end(), c, c + 4);
  };
  chunk("IDAT", stored.data(), size);
  chunk("IEND", nullptr, 0);
  return head;
}

// stb tries TGA last, having no signature to test: a file with none of the others' signatures.
bool is_tga(const std::vector<uint8_t>& b) {
  auto starts = [&](const char* magic, size_t n) { return b.size() >= n && std::memcmp(b.data(), magic, n) == 0; };
  return !(starts("\x89PNG", 4) || starts("BM", 2) || starts("GIF8", 4) || starts("8BPS", 4) || starts("\x53\x80\xF6\x34", 4) ||
           starts("#?", 2) || starts("\xFF\xD8", 2) || (b.size() >= 2 && b[0] == 'P'));
}

// TGA has no signature: when stb reads a file as TGA, the pixels its header promises, stored or in
// run-length packets, must be there.
std::string tga_refusal(const std::vector<uint8_t>& b) {
  const Fields f{b};
  const unsigned type = f.u8(2), bpp = (f.u8(16) + 7) / 8;
  const uint64_t pixels = uint64_t(f.u16(12)) * f.u16(14);
  uint64_t at = 18 + f.u8(0) + (f.u8(1) ? uint64_t(f.u16(5)) * ((f.u8(7) + 7) / 8) : 0);
  if (type >= 1 && type <= 3) return at + pixels * bpp <= b.size() ? "" : kTruncated;
  if (type >= 9 && type <= 11) {
    uint64_t done = 0;
    while (done < pixels) {
      if (at >= b.size()) return kTruncated;
      const unsigned packet = b[at++];
      const unsigned n = (packet & 0x7F) + 1;
      at += packet & 0x80 ? bpp : uint64_t(n) * bpp;
      done += n;
    }
    if (at > b.size()) return kTruncated;
    if (done > pixels) return "buffer overrun when reading image file";  // a packet past the last pixel
  }
  return "";
}

// Where stb reads a BMP otherwise than Pillow, fixed up on stb's RGBA output: a 32-bit uncompressed
// BMP's fourth byte is reserved to Pillow ("BGRX"), where stb takes it for alpha; 16-bit channels are
// scaled by v * 255 / (2^n - 1), truncated, where stb repeats the high bits.
void bmp_as_pillow(const std::vector<uint8_t>& bytes, const BmpHeader& bmp, uint8_t* rgba, int w, int h) {
  if (!bmp.bmp) return;
  const Fields f{bytes};
  const unsigned bits = bmp.bits;
  const uint32_t compression = bmp.compression;
  const size_t n = size_t(w) * size_t(h);
  if (bits == 32 && compression == 0)
    for (size_t i = 0; i < n; ++i) rgba[i * 4 + 3] = 255;
  if (bits == 16 && (compression == 0 || compression == 3)) {
    int depth[3] = {5, 5, 5};  // BI_RGB: 5-5-5; bit fields: the masks' widths (Pillow reads 5-6-5 and 5-5-5)
    if (compression == 3)
      for (int c = 0; c < 3; ++c) depth[c] = __builtin_popcount(f.u32(54 + 4 * c));
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < 3; ++c)
        if (depth[c] > 0 && depth[c] < 8) {
          const int v = rgba[i * 4 + c] >> (8 - depth[c]);
          rgba[i * 4 + c] = uint8_t(v * 255 / ((1 << depth[c]) - 1));
        }
  }
}

// A TGA stored right to left (descriptor bit 4): Pillow turns it, stb does not. Fixed up on stb's RGBA.
void tga_as_pillow(const std::vector<uint8_t>& bytes, uint8_t* rgba, int w, int h) {
  if (bytes.size() <= 17 || !(bytes[17] & 0x10)) return;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w / 2; ++x)
      std::swap_ranges(rgba + (size_t(y) * w + x) * 4, rgba + (size_t(y) * w + x) * 4 + 4, rgba + (size_t(y) * w + w - 1 - x) * 4);
}

// An uncompressed 1-, 4- or 8-bit BMP as Pillow's BmpImagePlugin reads it (stb reads palette entries it
// never wrote when the palette is shorter than the indices, and miscounts an OS/2 palette): the palette
// is biClrUsed entries (or 2^bits) right after the header; one that is a grey ramp (0, 1, 2, ...; or
// black and white at 1 bit) makes a greyscale image whose value is the index itself; otherwise an
// index past the entries present is black.
Image decode_bmp_palette(const std::string& path, const std::vector<uint8_t>& b, const BmpHeader& bmp) {
  const Fields f{b};
  const int64_t w = bmp.width, h = bmp.height;
  const unsigned bits = bmp.bits;
  if (w <= 0 || h == 0) throw FileError(path + ": not a readable image (a BMP of " + std::to_string(w) + "x" + std::to_string(h) + " pixels)");
  check_size(path, w, h < 0 ? -h : h);
  const size_t entry = bmp.os2 ? 3 : 4, at = 14 + bmp.size;
  const uint64_t colours = bmp.colours ? bmp.colours : 1u << bits;
  const uint64_t present = b.size() > at ? std::min<uint64_t>(colours, (b.size() - at) / entry) : 0;
  bool grey = present == colours;
  for (uint64_t i = 0; grey && i < (bits == 1 ? 2 : colours); ++i) {
    const unsigned v = bits == 1 ? (i ? 255 : 0) : unsigned(i);
    grey = i < present && f.u8(at + i * entry) == v && f.u8(at + i * entry + 1) == v && f.u8(at + i * entry + 2) == v;
  }
  Image im;
  im.width = int(w);
  im.height = int(h < 0 ? -h : h);
  im.rgb.resize(size_t(im.width) * im.height * 3);
  const size_t stride = (size_t(w) * bits + 31) / 32 * 4, offset = bmp.offset;
  for (int y = 0; y < im.height; ++y) {
    const size_t row = offset + stride * size_t(h > 0 ? im.height - 1 - y : y);
    for (int x = 0; x < im.width; ++x) {
      const size_t bit = size_t(x) * bits;
      const unsigned index = (f.u8(row + bit / 8) >> (8 - bits - bit % 8)) & ((1u << bits) - 1);
      uint8_t* out = &im.rgb[(size_t(y) * im.width + x) * 3];
      if (grey) {
        std::fill_n(out, 3, uint8_t(colours == 2 ? (index ? 255 : 0) : index));  // Pillow's mode 1 (two colours) or L
      } else if (index < present) {
        for (int c = 0; c < 3; ++c) out[c] = f.u8(at + index * entry + 2 - c);  // stored as B, G, R
      } else {
        std::fill_n(out, 3, uint8_t(0));
      }
    }
  }
  return im;
}

// WebP through libwebp's animation decoder, as Pillow reads every WebP file (a still image is one
// frame; of an animation, the first frame on a transparent canvas), and the orientation in its EXIF
// chunk, which Pillow's exif_transpose also applies.
Image decode_webp(const std::string& path, const std::vector<uint8_t>& bytes, int& orientation) {
  WebPBitstreamFeatures features;  // the canvas size before the decoder allocates the canvas
  if (WebPGetFeatures(bytes.data(), bytes.size(), &features) != VP8_STATUS_OK) throw FileError(path + ": not a readable image (a damaged WebP file)");
  check_size(path, features.width, features.height);
  const WebPData data = {bytes.data(), bytes.size()};
  WebPAnimDecoderOptions options;
  WebPAnimDecoderOptionsInit(&options);
  options.color_mode = MODE_RGBA;
  std::unique_ptr<WebPAnimDecoder, void (*)(WebPAnimDecoder*)> decoder(WebPAnimDecoderNew(&data, &options), WebPAnimDecoderDelete);
  WebPAnimInfo info;
  if (!decoder || !WebPAnimDecoderGetInfo(decoder.get(), &info)) throw FileError(path + ": not a readable image (a damaged WebP file)");
  check_size(path, info.canvas_width, info.canvas_height);
  uint8_t* rgba = nullptr;  // owned by the decoder
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(decoder.get(), &rgba, &timestamp)) throw FileError(path + ": not a readable image (a damaged WebP file)");
  const WebPDemuxer* demux = WebPAnimDecoderGetDemuxer(decoder.get());
  int exif = 0, from_xmp = 0;
  WebPChunkIterator chunk;
  if (WebPDemuxGetChunk(demux, "EXIF", 1, &chunk)) {
    exif = exif_orientation(chunk.chunk.bytes, chunk.chunk.size);
    WebPDemuxReleaseChunkIterator(&chunk);
  }
  if (WebPDemuxGetChunk(demux, "XMP ", 1, &chunk)) {
    from_xmp = xmp_orientation(chunk.chunk.bytes, chunk.chunk.size);
    WebPDemuxReleaseChunkIterator(&chunk);
  }
  orientation = orientation_of(exif, from_xmp);
  return over_black(rgba, int(info.canvas_width), int(info.canvas_height), features.has_alpha);  // Pillow: RGBX without it
}

}  // namespace

Image read_rgb(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path);
  auto turned = [&](Image (*decode)(const std::string&, const std::vector<uint8_t>&, int&)) {  // decoders that find the orientation
    int orientation = 1;
    const Image im = decode(path, bytes, orientation);
    return orient(im, orientation);
  };
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) return turned(decode_jpeg);
  if (bytes.size() >= 2 && bytes[0] == 'P' && bytes[1] >= '1' && bytes[1] <= '6') return load_pnm(path, bytes);
  if (is_tiff(bytes)) return turned(decode_tiff);
  if (bytes.size() >= 12 && std::memcmp(bytes.data(), "RIFF", 4) == 0 && std::memcmp(bytes.data() + 8, "WEBP", 4) == 0) return turned(decode_webp);
  int w = 0, h = 0, channels = 0;
  if (stbi_info_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels)) check_size(path, w, h);
  const int orientation = png_orientation(bytes);  // an eXIf chunk may follow the image data
  const bool tga = is_tga(bytes);
  const BmpHeader bmp(bytes);
  std::string refusal = pillow_refusal(bytes, bmp);
  if (refusal.empty()) bytes = png_as_pillow_reads(path, bytes, refusal);
  if (refusal.empty() && tga) refusal = tga_refusal(bytes);
  if (!refusal.empty()) throw FileError(path + ": not a readable image (" + refusal + ")");
  if (bmp.bmp && (bmp.bits == 1 || bmp.bits == 4 || bmp.bits == 8) && bmp.compression == 0) return decode_bmp_palette(path, bytes, bmp);
  if (channels == 1 && stbi_is_16_bit_from_memory(bytes.data(), int(bytes.size()))) return orient(load_grey16(path, bytes), orientation);
  std::unique_ptr<uint8_t, void (*)(void*)> data(stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &channels, 4), stbi_image_free);
  if (!data) throw FileError(path + ": not a readable image (" + stb_reason() + ")");
  bmp_as_pillow(bytes, bmp, data.get(), w, h);
  if (tga) tga_as_pillow(bytes, data.get(), w, h);
  return orient(over_black(data.get(), w, h), orientation);
}

}  // namespace restr_cli::decode
