// 8 threads sharing one handle give the sequential results, bit for bit (scores and maps); run in the
// default suite and under ThreadSanitizer (tests/native/test_native.py).
//   npgmf_threads_test BUNDLE PRECISION [THREADS]
// Images: deterministic synthetic RGB of several sizes, with padded rows (a row stride > 3 x width).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "npgmf/npgmf.hpp"

namespace {

struct Image {
    int32_t height, width;
    size_t stride;
    std::vector<uint8_t> pixels;
};

Image synthetic(int32_t height, int32_t width, uint32_t seed) {
    Image image{height, width, static_cast<size_t>(width) * 3 + 5, {}};
    image.pixels.assign(image.stride * static_cast<size_t>(height), 0);
    uint32_t state = seed;
    for (int32_t y = 0; y < height; ++y)
        for (int32_t x = 0; x < width * 3; ++x) {
            state = state * 1664525u + 1013904223u;
            image.pixels[static_cast<size_t>(y) * image.stride + static_cast<size_t>(x)] =
                static_cast<uint8_t>((x * 7 + y * 3) % 200 + (state >> 28));
        }
    return image;
}

bool same(const npgmf::Result &a, const npgmf::Result &b) {
    return a.score == b.score && a.verdict == b.verdict && a.map == b.map;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: npgmf_threads_test BUNDLE PRECISION [THREADS]\n");
        return 2;
    }
    const int threads = argc > 3 ? std::atoi(argv[3]) : 8;
    try {
        const npgmf::Inspector inspector(argv[1], npgmf::Options().precision(argv[2]).threads(1));
        std::vector<Image> images;
        const int32_t sizes[][2] = {{64, 64}, {40, 56}, {97, 80}, {128, 100}};
        for (uint32_t k = 0; k < 4; ++k) images.push_back(synthetic(sizes[k][0], sizes[k][1], k + 1));
        auto run = [&](const Image &image) {
            return inspector.inspect_rgb(image.pixels.data(), image.height, image.width, image.stride, true);
        };
        std::vector<npgmf::Result> sequential;
        for (const Image &image : images) sequential.push_back(run(image));
        std::vector<int> mismatches(static_cast<size_t>(threads), 0);
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                for (int round = 0; round < 2; ++round)
                    for (size_t k = 0; k < images.size(); ++k) {
                        const size_t which = (k + static_cast<size_t>(t)) % images.size();
                        if (!same(run(images[which]), sequential[which])) ++mismatches[static_cast<size_t>(t)];
                    }
            });
        for (auto &thread : pool) thread.join();
        int total = 0;
        for (int m : mismatches) total += m;
        std::printf("{\"threads\": %d, \"calls\": %d, \"mismatches\": %d, \"scores\": [%.9g, %.9g, %.9g, %.9g]}\n", threads,
                    threads * 2 * static_cast<int>(images.size()), total, sequential[0].score, sequential[1].score,
                    sequential[2].score, sequential[3].score);
        return total == 0 ? 0 : 1;
    } catch (const npgmf::Error &exc) {
        std::fprintf(stderr, "npgmf_threads_test: %s (%s)\n", exc.what(), npgmf_status_name(exc.status()));
        return 2;
    }
}
