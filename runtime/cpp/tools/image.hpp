// restr-predict-cpp's images: RGB pixels, PNG files written by stb_image_write, and restr-predict's
// overlay. Image files are read by decode/decode.hpp.
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
