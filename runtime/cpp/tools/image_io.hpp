// Image files for restr-predict-cpp: JPEG through libjpeg-turbo (as Pillow) with the EXIF orientation
// applied (libexif), WebP through libwebp, TIFF through libtiff (tiff.hpp), PBM/PGM/PPM through libnetpbm (scaled as Pillow scales them),
// other formats through stb_image (Debian's libstb), each as restr-predict decodes it; PNGs written by
// stb_image_write.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace restr_cli {

// An image that cannot be read or a file that cannot be written: bad input or a disk failure (exit 2).
struct FileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height * width * 3
};

// Decode JPEG, PNG, WebP, TIFF, BMP, GIF, TGA, PNM to RGB as restr.runtime's load_image: EXIF orientation
// applied (JPEG, WebP, TIFF, PNG), transparent pixels composed over black. Throws FileError with a one-line reason.
Image load_image(const std::string& path);
// Write a PNG of 1 (grey) or 3 (RGB) channels; throws FileError.
void write_png(const std::string& path, const uint8_t* pixels, int width, int height, int channels);
// restr.runtime.visualize.overlay with its defaults, in its integer arithmetic: the pixels of the
// mask (a byte per pixel, nonzero inside) as they are; a white contour, the pixels outside the mask
// within contour_width(height, width) of it (Chebyshev distance); every other channel c becomes
// (c + y) >> 2, y the pixel's luma as Pillow's convert("L"): half the colour, at half the brightness.
std::vector<uint8_t> overlay(const Image& image, const uint8_t* mask);
// The contour's width for an image of height x width: max(2, max(height, width) / 300).
int contour_width(int height, int width);

}  // namespace restr_cli
