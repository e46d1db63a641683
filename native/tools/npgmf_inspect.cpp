// npgmf-inspect BUNDLE IMAGE... : one JSON line per image with the fields of `npgmf-edge predict --json`
// (image, score, threshold, verdict, precision, overlay, error); a bad image gets its own error line and
// the others their verdicts; exit 1 if any failed, 2 if the bundle cannot be opened. --describe BUNDLE:
// one JSON line of npgmf_describe instead (what answers, its self-test, whether the signature was verified
// and by which key).
//
//   npgmf-inspect [--precision P] [--fallback P] [--device cpu|cuda|tensorrt] [--threads N]
//                 [--max-pixels N] [--trust KEY_OR_FOLDER] (BUNDLE IMAGE... | --describe BUNDLE)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "npgmf/npgmf.hpp"
#include "pyjson.h"

namespace {

std::string json_string(const std::string &text) {
    std::string out = "\"";
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (byte < 0x20) {
            char buffer[16];
            std::snprintf(buffer, sizeof buffer, "\\u%04x", byte);
            out += buffer;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

// round(x, 6) as the Python CLI writes it (json.dumps of a Python float).
std::string number(double value) { return npgmf::python_float_repr(std::round(value * 1e6) / 1e6 + 0.0); }

const char *verdict_name(npgmf_verdict verdict) {
    return verdict == NPGMF_VERDICT_GOOD ? "good" : verdict == NPGMF_VERDICT_ANOMALOUS ? "anomalous" : "error";
}

int usage() {
    std::fprintf(stderr, "usage: npgmf-inspect [--precision P] [--fallback P] [--device cpu|cuda|tensorrt] "
                         "[--threads N] [--max-pixels N] [--trust KEY_OR_FOLDER] (BUNDLE IMAGE... | --describe BUNDLE)\n");
    return 2;
}

// npgmf_info as one JSON object (NaN, "not checked", as null).
std::string describe_json(const std::string &bundle, const npgmf_info &info) {
    auto finite = [](double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); };
    const nlohmann::json out = {
        {"bundle", bundle}, {"precision", info.precision}, {"requested_precision", info.requested_precision},
        {"knn", info.knn}, {"backend", info.backend}, {"fallback_reason", info.fallback_reason},
        {"image_size", info.image_size}, {"threshold", info.threshold}, {"self_test_ran", info.self_test_ran == 1},
        {"self_test_score_error", finite(info.self_test_score_error)}, {"self_test_budget", finite(info.self_test_budget)},
        {"self_test_map_error", finite(info.self_test_map_error)}, {"self_test_map_budget", finite(info.self_test_map_budget)},
        {"self_test_verdict_flips", info.self_test_verdict_flips}, {"self_test_max_flips", info.self_test_max_flips},
        {"signature_verified", info.signature_verified == 1}, {"signed_by", info.signed_by},
    };
    return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

int main(int argc, char **argv) {
    npgmf::Options options;
    std::vector<std::string> positional;
    bool describe = false;
    for (int k = 1; k < argc; ++k) {
        const std::string arg = argv[k];
        auto value = [&]() -> std::string {
            if (k + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
            return argv[++k];
        };
        try {
            if (arg == "--precision") options.precision(value());
            else if (arg == "--fallback") options.fallback(value());
            else if (arg == "--device") options.device(value());
            else if (arg == "--threads") options.threads(std::stoi(value()));
            else if (arg == "--max-pixels") options.max_pixels(std::stoll(value()));
            else if (arg == "--trust") options.trust(value());
            else if (arg == "--describe") describe = true;
            else if (arg == "--help" || arg == "-h") return usage(), 0;
            else if (arg.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + arg);
            else positional.push_back(arg);
        } catch (const std::exception &exc) {
            std::fprintf(stderr, "npgmf-inspect: %s\n", exc.what());
            return usage();
        }
    }
    if (describe ? positional.size() != 1 : positional.size() < 2) return usage();
    try {
        const npgmf::Inspector inspector(positional[0], options);
        const npgmf_info info = inspector.describe();
        if (describe) {
            std::printf("%s\n", describe_json(positional[0], info).c_str());
            return 0;
        }
        if (info.fallback_reason[0])
            std::fprintf(stderr, "npgmf-inspect: %s; answering in %s (fallback)\n", info.fallback_reason, info.precision);
        int failed = 0;
        for (size_t k = 1; k < positional.size(); ++k) {
            const std::string &image = positional[k];
            std::string score = "null", verdict = "error", error;
            double threshold = info.threshold;
            try {
                const npgmf::Result result = inspector.inspect_file(image);
                score = number(result.score);
                verdict = verdict_name(result.verdict);
                threshold = result.threshold;
            } catch (const npgmf::Error &exc) {
                error = exc.what();
                ++failed;
            }
            std::printf("{\"image\": %s, \"score\": %s, \"threshold\": %s, \"verdict\": \"%s\", \"precision\": \"%s\", "
                        "\"overlay\": \"\", \"error\": %s}\n",
                        json_string(image).c_str(), score.c_str(), number(threshold).c_str(), verdict.c_str(), info.precision,
                        json_string(error).c_str());
            std::fflush(stdout);
        }
        return failed ? 1 : 0;
    } catch (const npgmf::Error &exc) {
        std::fprintf(stderr, "npgmf-inspect: %s\n", exc.what());
        return 2;
    }
}
