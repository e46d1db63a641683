// Decoding and pre-processing as the Python runtime does them (data/image_io.py, preprocess.py):
//   - the header's size is read before anything is decoded; bytes above max_pixels are refused
//     (decode_image_bytes), files above it decoded reduced where the format allows (read_image);
//   - OpenCV's imdecode with IMREAD_UNCHANGED (no EXIF rotation), then 16-bit -> round(v / 257), grey,
//     BGR or BGRA -> RGB;
//   - to_model_input: INTER_AREA when shrinking, INTER_LINEAR when enlarging, HWC -> CHW float32 in 0..255;
//   - map_to_image_size: a bilinear resize of the fused map back to the image's own size.
#pragma once

#include <opencv2/core.hpp>
#include <string>
#include <vector>

namespace npgmf {

constexpr int64_t kDefaultMaxPixels = 16000000;

struct Header {
    std::string format;
    int64_t width = 0, height = 0;
};

// The size an encoded image claims (PNG, JPEG, BMP, GIF, PNM); false when its header states none. The
// other formats OpenCV decodes (TIFF, WebP, AVIF, JPEG 2000, PAM, PFM, HDR, Sun raster) are refused by
// name before decoding (docs/EMBED.md, "Differences from the Python runtime").
bool read_header(const unsigned char *data, size_t size, Header &header);

// RGB uint8 (H, W, 3) from encoded bytes, decode_image_bytes' rules; `name` is what errors call it.
cv::Mat decode_bytes(const std::vector<unsigned char> &data, int64_t max_pixels, const std::string &name);

// RGB uint8 from an image file, read_image's rules (reduced decoding above max_pixels).
cv::Mat decode_file(const std::string &path, int64_t max_pixels);

// (3, size, size) float32 written to `out` (3 * size * size floats).
void to_model_input(const cv::Mat &rgb, int size, float *out);

}  // namespace npgmf
