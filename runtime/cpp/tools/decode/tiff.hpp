// TIFF for restr-predict-cpp, through libtiff (Debian's), read as Pillow reads it: the first image,
// in the modes Pillow's TiffImagePlugin opens, converted to RGB as restr.runtime.transforms.to_rgb.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../image.hpp"

namespace restr_cli::decode {

// A TIFF or BigTIFF, either byte order.
bool is_tiff(const std::vector<uint8_t>& bytes);
// The image in RGB, not yet turned: `orientation` gets its Orientation tag, else its XMP's, else 1.
// Throws FileError with a one-line reason (damaged data, or a mode restr-predict-cpp does not read).
Image decode_tiff(const std::string& path, const std::vector<uint8_t>& bytes, int& orientation);

}  // namespace restr_cli::decode
