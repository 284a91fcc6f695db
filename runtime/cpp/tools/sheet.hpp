// restr-predict-cpp --sheet: every expression's overlay side by side (wrapping after 4), captioned,
// in restr.runtime.visualize.contact_sheet's layout. Captions use stb_easy_font (a built-in ASCII
// bitmap font: no font file to find); a tile is the overlay drawn at the tile's size, on the photo
// and the masks scaled as Pillow's BILINEAR resize scales them (restr-predict's pixels).
#pragma once
#include <string>
#include <vector>

#include "image.hpp"

namespace restr_cli {

Image contact_sheet(const Image& image, const std::vector<const uint8_t*>& masks, const std::vector<std::string>& captions, int tile = 320);

}  // namespace restr_cli
