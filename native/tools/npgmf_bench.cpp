// npgmf-bench BUNDLE PRECISION REPEAT IMAGE... : per-image seconds of the native runtime at batch 1 by stage
// (decode, preprocess, graph, knn, post), the names `npgmf-edge bench` uses; one JSON line. Each image is
// inspected REPEAT times after one warm-up pass. Used by scripts/bench_native.py; not part of the ABI.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "image.h"
#include "inspector.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: npgmf-bench BUNDLE PRECISION REPEAT IMAGE...\n");
        return 2;
    }
    try {
        npgmf::OpenOptions options;
        options.precision = argv[2];
        const int repeat = std::atoi(argv[3]);
        auto inspector = npgmf::Inspector::open(argv[1], options);
        npgmf::Stages stages;
        std::vector<double> totals;
        for (int pass = -1; pass < repeat; ++pass)
            for (int k = 4; k < argc; ++k) {
                npgmf::Stages one;
                const auto start = std::chrono::steady_clock::now();
                auto tick = start;
                const cv::Mat rgb = npgmf::decode_file(argv[k], npgmf::kDefaultMaxPixels);
                one.decode = std::chrono::duration<double>(std::chrono::steady_clock::now() - tick).count();
                std::vector<float> map(static_cast<size_t>(rgb.rows) * static_cast<size_t>(rgb.cols));
                inspector->inspect(rgb, map.data(), &one);
                const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                if (pass < 0) continue;  // warm-up
                totals.push_back(total);
                stages.decode += one.decode;
                stages.preprocess += one.preprocess;
                stages.graph += one.graph;
                stages.knn += one.knn;
                stages.post += one.post;
            }
        const double n = static_cast<double>(totals.size());
        std::vector<double> sorted = totals;
        std::sort(sorted.begin(), sorted.end());
        std::printf("{\"precision\": \"%s\", \"knn\": \"%s\", \"images\": %zu, \"backend\": \"%s\", \"p50_s\": %.6g, "
                    "\"mean_s\": %.6g, \"stages_s\": {\"decode\": %.6g, \"preprocess\": %.6g, \"graph\": %.6g, \"knn\": %.6g, "
                    "\"post\": %.6g}}\n",
                    inspector->precision().c_str(), inspector->manifest().knn.c_str(), totals.size(), inspector->backend().c_str(),
                    sorted[sorted.size() / 2], [&] { double s = 0; for (double t : totals) s += t; return s / n; }(),
                    stages.decode / n, stages.preprocess / n, stages.graph / n, stages.knn / n, stages.post / n);
        return 0;
    } catch (const std::exception &exc) {
        std::fprintf(stderr, "npgmf-bench: %s\n", exc.what());
        return 2;
    }
}
