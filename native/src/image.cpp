#include "image.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "bundle.h"

namespace npgmf {
namespace {

constexpr const char *kUndecodable = "OpenCV cannot decode it (corrupt, truncated or not an image)";
constexpr int64_t kFullDecodeFactor = 16;
constexpr int64_t kOpenCvMaxPixels = int64_t{1} << 30;

Error image_error(const std::string &message) { return Error(NPGMF_IMAGE_ERROR, message); }

// 16000000 -> "16,000,000", as Python's f"{n:,}".
std::string thousands(int64_t value) {
    std::string digits = std::to_string(value), out;
    for (size_t k = 0; k < digits.size(); ++k) {
        if (k && (digits.size() - k) % 3 == 0) out += ',';
        out += digits[k];
    }
    return out;
}

uint32_t be32(const unsigned char *p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint16_t be16(const unsigned char *p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint16_t le16(const unsigned char *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
int32_t le32(const unsigned char *p) {
    return static_cast<int32_t>(uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24));
}

bool jpeg_size(const unsigned char *data, size_t size, Header &header) {
    size_t at = 2;
    while (at + 4 <= size) {
        if (data[at] != 0xff) return false;
        const unsigned char marker = data[at + 1];
        if (marker == 0xff) {  // fill byte
            ++at;
            continue;
        }
        if (marker == 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker == 0x01) {
            at += 2;
            continue;
        }
        const size_t length = be16(data + at + 2);
        const bool frame = marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc;
        if (frame) {
            if (at + 9 > size) return false;
            header.height = be16(data + at + 5);
            header.width = be16(data + at + 7);
            return true;
        }
        if (length < 2) return false;
        at += 2 + length;
    }
    return false;
}

bool pnm_size(const unsigned char *data, size_t size, Header &header) {
    size_t at = 2;
    int64_t values[2];
    for (int64_t &value : values) {
        while (at < size && (std::isspace(data[at]) || data[at] == '#')) {
            if (data[at] == '#')
                while (at < size && data[at] != '\n') ++at;
            else
                ++at;
        }
        if (at >= size || !std::isdigit(data[at])) return false;
        value = 0;
        while (at < size && std::isdigit(data[at]) && value < (int64_t{1} << 40)) value = value * 10 + (data[at++] - '0');
    }
    header.width = values[0];
    header.height = values[1];
    return true;
}

// 1, or the reduced-decoding factor (2, 4, 8) bringing a file under max_pixels; ImageError when decoding
// it would cost too much (image_io._reduction).
int reduction(const Header &header, bool known, int64_t max_pixels, const std::string &path) {
    if (!known)
        throw image_error("cannot read image " + path + ": OpenCV cannot decode it (corrupt, truncated or not an image: "
                          "its header states no size, so the pixel limit cannot be checked)");
    const int64_t pixels = header.width * header.height;
    if (pixels <= max_pixels) return 1;
    int factor = 0;
    for (int f : {2, 4, 8})
        if (pixels <= max_pixels * f * f) {
            factor = f;
            break;
        }
    const int64_t weight = header.format == "gif" ? 2 : 1;
    const bool affordable = header.format == "jpeg" || pixels * weight <= kFullDecodeFactor * max_pixels;
    char buffer[512];
    if (!affordable || factor == 0) {
        std::snprintf(buffer, sizeof buffer,
                      "image %s is %lldx%lld (%.0f MP), too large to decode under the limit of %.0f MP (only JPEG is "
                      "reduced while decoding; other formats up to %.0f MP); shrink it, save it as JPEG, or raise --max-pixels",
                      path.c_str(), static_cast<long long>(header.width), static_cast<long long>(header.height),
                      pixels / 1e6, max_pixels / 1e6, kFullDecodeFactor * max_pixels / 1e6);
        throw image_error(buffer);
    }
    if (pixels > kOpenCvMaxPixels) {
        std::snprintf(buffer, sizeof buffer, "image %s is %lldx%lld (%.0f MP), more than OpenCV decodes here; shrink it",
                      path.c_str(), static_cast<long long>(header.width), static_cast<long long>(header.height), pixels / 1e6);
        throw image_error(buffer);
    }
    return factor;
}

cv::Mat imdecode(const std::vector<unsigned char> &data, int flags, const std::string &name) {
    try {
        cv::Mat pixels = cv::imdecode(data, flags);
        if (pixels.empty()) throw image_error("cannot read " + name + ": " + kUndecodable);
        return pixels;
    } catch (const cv::Exception &exc) {
        std::string reason = exc.err.empty() ? "decoder error" : exc.err.substr(0, exc.err.find('\n'));
        throw image_error("cannot read " + name + ": OpenCV cannot decode it (" + reason + ")");
    }
}

// Raw decoded pixels (any depth or channel count, BGR order) -> RGB uint8 (image_io._to_rgb).
cv::Mat to_rgb(const cv::Mat &raw, const std::string &name) {
    cv::Mat pixels = raw;
    if (pixels.depth() == CV_16U) {
        cv::Mat narrowed;
        pixels.convertTo(narrowed, CV_8U, 1.0 / 257.0);
        pixels = narrowed;
    } else if (pixels.depth() != CV_8U) {
        throw image_error("image " + name + " has another pixel type than 8 or 16-bit integers; convert it");
    }
    cv::Mat rgb;
    switch (pixels.channels()) {
        case 1: cv::cvtColor(pixels, rgb, cv::COLOR_GRAY2RGB); break;
        case 3: cv::cvtColor(pixels, rgb, cv::COLOR_BGR2RGB); break;
        case 4: cv::cvtColor(pixels, rgb, cv::COLOR_BGRA2RGB); break;
        default: throw image_error("cannot read " + name + ": " + std::to_string(pixels.channels()) + " colour channels");
    }
    return rgb;
}

// OpenCV decodes these too, but their headers are not read here: refused by name, never decoded unbounded
// (signatures as data/image_header.py's sniff_format tells them).
const char *unread_format(const unsigned char *data, size_t size) {
    auto starts = [&](const char *prefix, size_t n, size_t at = 0) {
        return size >= at + n && std::memcmp(data + at, prefix, n) == 0;
    };
    if (starts("II*\0", 4) || starts("MM\0*", 4) || starts("II+\0", 4) || starts("MM\0+", 4)) return "TIFF";
    if (starts("\0\0\0\x0cjP  \r\n\x87\n", 12) || starts("\xff\x4f\xff\x51", 4)) return "JPEG 2000";
    if (starts("P7", 2)) return "PAM";
    if (starts("PF", 2) || starts("Pf", 2)) return "PFM";
    if (starts("#?RADIANCE", 10) || starts("#?RGBE", 6)) return "Radiance HDR";
    if (starts("\x59\xa6\x6a\x95", 4)) return "Sun raster";
    if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "WebP";
    if (starts("ftyp", 4, 4)) return "AVIF";
    return nullptr;
}

// A format this reader has no header check for: one line naming it, before OpenCV sees a byte.
void refuse_unread(const std::vector<unsigned char> &data, const std::string &name) {
    if (const char *format = unread_format(data.data(), data.size()))
        throw image_error("cannot read " + name + ": it is " + format +
                          ", which the native runtime does not decode (it checks the size of PNG, JPEG, BMP, GIF "
                          "and PNM headers before decoding); convert it to PNG, or use the Python runtime");
}

}  // namespace

bool read_header(const unsigned char *data, size_t size, Header &header) {
    auto starts = [&](const char *prefix, size_t n) { return size >= n && std::memcmp(data, prefix, n) == 0; };
    bool ok = false;
    if (starts("\x89PNG\r\n\x1a\n", 8)) {
        header.format = "png";
        ok = size >= 24 && std::memcmp(data + 12, "IHDR", 4) == 0;
        if (ok) {
            header.width = be32(data + 16);
            header.height = be32(data + 20);
        }
    } else if (starts("\xff\xd8\xff", 3)) {
        header.format = "jpeg";
        ok = jpeg_size(data, size, header);
    } else if (starts("GIF87a", 6) || starts("GIF89a", 6)) {
        header.format = "gif";
        ok = size >= 10;
        if (ok) {
            header.width = le16(data + 6);
            header.height = le16(data + 8);
        }
    } else if (starts("BM", 2)) {
        header.format = "bmp";
        if (size >= 26) {
            if (le32(data + 14) == 12) {
                header.width = le16(data + 18);
                header.height = le16(data + 20);
                ok = true;
            } else {
                header.width = le32(data + 18);
                const int64_t height = le32(data + 22);
                header.height = height < 0 ? -height : height;
                ok = header.width > 0;
            }
        }
    } else if (size >= 2 && data[0] == 'P' && data[1] >= '1' && data[1] <= '6') {
        header.format = "pnm";
        ok = pnm_size(data, size, header);
    }
    return ok && header.width >= 1 && header.height >= 1;
}

cv::Mat decode_bytes(const std::vector<unsigned char> &data, int64_t max_pixels, const std::string &name) {
    if (data.empty()) throw image_error("cannot read " + name + ": OpenCV cannot decode it (it is empty)");
    refuse_unread(data, name);
    Header header;
    if (!read_header(data.data(), data.size(), header))
        throw image_error("cannot read " + name + ": OpenCV cannot decode it (corrupt, truncated or not an image: "
                          "its header states no size, so the pixel limit cannot be checked)");
    if (header.width * header.height > max_pixels) {
        throw image_error(name + " is " + std::to_string(header.width) + "x" + std::to_string(header.height) + " (" +
                          thousands(header.width * header.height) + " pixels), above the limit of " + thousands(max_pixels) +
                          "; shrink it before sending, or open the bundle with a larger max_pixels");
    }
    return to_rgb(imdecode(data, cv::IMREAD_UNCHANGED, name), name);
}

cv::Mat decode_file(const std::string &path, int64_t max_pixels) {
    std::ifstream in(path, std::ios::binary);
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw image_error("image " + path + " is a directory, not an image file");
    if (!in || !std::filesystem::is_regular_file(path, ec)) throw image_error("image " + path + " does not exist");
    // One sized read: the byte-by-byte istreambuf_iterator copy cost ~10 % of a 100 KB PNG's decode.
    in.seekg(0, std::ios::end);
    const std::streamoff size = std::max<std::streamoff>(in.tellg(), 0);
    in.seekg(0, std::ios::beg);
    std::vector<unsigned char> data(static_cast<size_t>(size));
    in.read(reinterpret_cast<char *>(data.data()), size);
    data.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));  // a file that shrank meanwhile
    if (data.empty()) throw image_error("cannot read image " + path + ": OpenCV cannot decode it (the file is empty)");
    refuse_unread(data, "image " + path);
    Header header;
    const bool known = read_header(data.data(), data.size(), header);
    const int factor = reduction(header, known, max_pixels, path);
    int flags = cv::IMREAD_UNCHANGED;
    if (factor > 1) {
        flags = (factor == 2 ? cv::IMREAD_REDUCED_COLOR_2 : factor == 4 ? cv::IMREAD_REDUCED_COLOR_4 : cv::IMREAD_REDUCED_COLOR_8) |
                cv::IMREAD_IGNORE_ORIENTATION;
    }
    return to_rgb(imdecode(data, flags, "image " + path), path);
}

void to_model_input(const cv::Mat &rgb, int size, float *out) {
    const bool shrinking = size < rgb.rows || size < rgb.cols;
    cv::Mat resized;
    cv::resize(rgb, resized, cv::Size(size, size), 0, 0, shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
    const size_t plane = static_cast<size_t>(size) * static_cast<size_t>(size);
    for (int y = 0; y < size; ++y) {
        const unsigned char *row = resized.ptr<unsigned char>(y);
        for (int x = 0; x < size; ++x)
            for (int c = 0; c < 3; ++c)
                out[static_cast<size_t>(c) * plane + static_cast<size_t>(y) * size + x] = row[3 * x + c];
    }
}

}  // namespace npgmf
