// Image files for restr-predict-cpp, decoded as restr-predict decodes them with Pillow: JPEG through
// libjpeg-turbo with the EXIF orientation applied (libexif), WebP through libwebp, TIFF through libtiff
// (tiff.hpp), PBM/PGM/PPM through libnetpbm (scaled as Pillow scales them), other formats through
// stb_image (Debian's libstb). The one entry point: everything else in this folder is its detail.
// The library (librestr_runtime) takes RGB buffers and decodes nothing.
#pragma once
#include <string>

#include "../image.hpp"

namespace restr_cli::decode {

// Decode JPEG, PNG, WebP, TIFF, BMP, GIF, TGA, PNM to RGB as restr.runtime's load_image: EXIF orientation
// applied (JPEG, WebP, TIFF, PNG), transparent pixels composed over black. Throws FileError with a one-line reason.
Image read_rgb(const std::string& path);

}  // namespace restr_cli::decode
