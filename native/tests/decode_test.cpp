// npgmf_decode_test OUT FILE... : each FILE's bytes decoded as npgmf_inspect_encoded decodes them
// (decode_bytes), the RGB pixels written to OUT/<k>.rgb (k from 0); one JSON line per file: height, width
// and the error ("" when decoded). Lets tests/native/test_native_png.py compare Debian's OpenCV's pixels
// with the wheel's cv2 on PNG variants; not installed.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bundle.h"
#include "image.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: npgmf_decode_test OUT FILE...\n");
        return 2;
    }
    for (int k = 2; k < argc; ++k) {
        std::ifstream in(argv[k], std::ios::binary);
        const std::vector<unsigned char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        nlohmann::json line = {{"height", 0}, {"width", 0}, {"error", ""}};
        try {
            const cv::Mat rgb = npgmf::decode_bytes(data, npgmf::kDefaultMaxPixels, "image");
            line["height"] = rgb.rows;
            line["width"] = rgb.cols;
            std::ofstream out(std::string(argv[1]) + "/" + std::to_string(k - 2) + ".rgb", std::ios::binary);
            for (int y = 0; y < rgb.rows; ++y)
                out.write(reinterpret_cast<const char *>(rgb.ptr(y)), static_cast<std::streamsize>(rgb.cols) * 3);
        } catch (const npgmf::Error &exc) {
            line["error"] = exc.what();
        }
        std::printf("%s\n", line.dump().c_str());
    }
    return 0;
}
