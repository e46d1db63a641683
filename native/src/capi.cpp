// The C ABI (npgmf.h) over npgmf::Inspector: argument checks, exceptions -> status + one-line message.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <cstring>
#include <fstream>
#include <new>
#include <opencv2/core.hpp>
#include <string>

#include "image.h"
#include "inspector.h"
#include "npgmf/npgmf.h"

#undef npgmf_open_options_init  // the header's macro: here the first ABI's function is defined by its name

struct npgmf_inspector {
    std::unique_ptr<npgmf::Inspector> inspector;
    int64_t max_pixels = npgmf::kDefaultMaxPixels;
};

namespace {

thread_local std::string last_error;

// The first published size of each struct: smaller ones are refused, larger ones (a newer caller) are
// read as far as this library knows them.
constexpr size_t kOptionsV1 = offsetof(npgmf_open_options, max_pixels) + sizeof(int64_t);
constexpr size_t kOptionsTrust = offsetof(npgmf_open_options, trust) + sizeof(const char *);  // libnpgmf 0.2
constexpr size_t kResultV1 = offsetof(npgmf_result, map_width) + sizeof(int32_t);
constexpr size_t kInfoV1 = offsetof(npgmf_info, self_test_max_flips) + sizeof(int32_t);
constexpr size_t kInfoSignature = offsetof(npgmf_info, signed_by) + sizeof(npgmf_info::signed_by);  // libnpgmf 0.3

npgmf_status fail(npgmf_status status, const std::string &message) {
    std::string line = message;
    for (char &c : line)
        if (c == '\n' || c == '\r') c = ' ';
    last_error = line;
    return status;
}

npgmf_status ok() {
    last_error.clear();
    return NPGMF_OK;
}

template <typename F>
npgmf_status guarded(F &&body) {
    try {
        return body();
    } catch (const npgmf::Error &exc) {
        return fail(exc.status(), exc.what());
    } catch (const std::bad_alloc &) {
        return fail(NPGMF_INTERNAL, "out of memory");
    } catch (const cv::Exception &exc) {
        return fail(NPGMF_INTERNAL, "OpenCV failed (" + exc.err + ")");
    } catch (const std::exception &exc) {
        return fail(NPGMF_INTERNAL, exc.what());
    } catch (...) {
        return fail(NPGMF_INTERNAL, "an unknown error");
    }
}

npgmf_status check_result(npgmf_result *result) {
    if (!result) return fail(NPGMF_INVALID_ARGUMENT, "result is NULL");
    if (result->struct_size < kResultV1)
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_result.struct_size is " + std::to_string(result->struct_size) +
                                                ", smaller than any npgmf_result (" + std::to_string(kResultV1) +
                                                "); set it to sizeof(npgmf_result) or call npgmf_result_init");
    return NPGMF_OK;
}

void clear_result(npgmf_result *result, double threshold) {
    result->score = NAN;
    result->threshold = threshold;
    result->verdict = NPGMF_VERDICT_ERROR;
    result->map_height = result->map_width = 0;
}

npgmf_status inspect(npgmf_inspector *handle, const cv::Mat &rgb, npgmf_result *result) {
    const double threshold = handle->inspector->calibration().threshold;
    const size_t pixels = static_cast<size_t>(rgb.rows) * static_cast<size_t>(rgb.cols);
    if (result->map && result->map_capacity < pixels)
        return fail(NPGMF_BUFFER_TOO_SMALL, "the map buffer holds " + std::to_string(result->map_capacity) +
                                                " floats, the image has " + std::to_string(pixels) + " pixels (" +
                                                std::to_string(rgb.rows) + "x" + std::to_string(rgb.cols) + ")");
    const float score = handle->inspector->inspect(rgb, result->map);
    result->score = score;
    if (result->map) {
        result->map_height = rgb.rows;
        result->map_width = rgb.cols;
    }
    if (!std::isfinite(score))
        return fail(NPGMF_NON_FINITE, "the anomaly score is not a finite number (" + std::to_string(score) +
                                          "); the model files may be damaged");
    result->verdict = score > threshold ? NPGMF_VERDICT_ANOMALOUS : NPGMF_VERDICT_GOOD;
    return ok();
}

void copy(char *dst, size_t capacity, const std::string &src) {
    const size_t n = std::min(capacity - 1, src.size());
    std::memcpy(dst, src.data(), n);
    dst[n] = '\0';
}

}  // namespace

extern "C" {

int32_t npgmf_abi_version(void) { return NPGMF_ABI_VERSION; }

const char *npgmf_version_string(void) {
    static const std::string version = std::string(NPGMF_VERSION) + " (onnxruntime " + npgmf::onnxruntime_version() +
                                       ", faiss " + npgmf::faiss_version() + ")";
    return version.c_str();
}

const char *npgmf_last_error(void) { return last_error.c_str(); }

const char *npgmf_status_name(npgmf_status status) {
    switch (status) {
        case NPGMF_OK: return "NPGMF_OK";
        case NPGMF_INVALID_ARGUMENT: return "NPGMF_INVALID_ARGUMENT";
        case NPGMF_BUNDLE_ERROR: return "NPGMF_BUNDLE_ERROR";
        case NPGMF_SELFTEST_FAILED: return "NPGMF_SELFTEST_FAILED";
        case NPGMF_IMAGE_ERROR: return "NPGMF_IMAGE_ERROR";
        case NPGMF_BACKEND_ERROR: return "NPGMF_BACKEND_ERROR";
        case NPGMF_UNSUPPORTED: return "NPGMF_UNSUPPORTED";
        case NPGMF_BUFFER_TOO_SMALL: return "NPGMF_BUFFER_TOO_SMALL";
        case NPGMF_NON_FINITE: return "NPGMF_NON_FINITE";
        case NPGMF_INTERNAL: return "NPGMF_INTERNAL";
        case NPGMF_SIGNATURE_ERROR: return "NPGMF_SIGNATURE_ERROR";
    }
    return "NPGMF_UNKNOWN_STATUS";
}

npgmf_status npgmf_open_options_init_sized(npgmf_open_options *options, size_t struct_size) {
    if (!options) return fail(NPGMF_INVALID_ARGUMENT, "options is NULL");
    if (struct_size < kOptionsV1)
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_open_options_init_sized: struct_size " + std::to_string(struct_size) +
                                                " is smaller than any npgmf_open_options (" + std::to_string(kOptionsV1) + ")");
    npgmf_open_options defaults;
    std::memset(&defaults, 0, sizeof defaults);
    defaults.struct_size = struct_size;
    defaults.self_test = 1;
    // Never past the caller's struct; a newer caller's fields beyond ours are zeroed (their defaults).
    std::memcpy(options, &defaults, std::min(struct_size, sizeof defaults));
    if (struct_size > sizeof defaults) std::memset(reinterpret_cast<char *>(options) + sizeof defaults, 0, struct_size - sizeof defaults);
    return ok();
}

npgmf_status npgmf_open_options_init(npgmf_open_options *options) {
    return npgmf_open_options_init_sized(options, kOptionsV1);  // the first ABI's callers: version 1's struct
}

npgmf_status npgmf_result_init(npgmf_result *result) {
    if (!result) return fail(NPGMF_INVALID_ARGUMENT, "result is NULL");
    std::memset(result, 0, sizeof *result);
    result->struct_size = sizeof *result;
    result->score = NAN;
    result->verdict = NPGMF_VERDICT_ERROR;
    return ok();
}

npgmf_status npgmf_open(const char *bundle_dir, const npgmf_open_options *options, npgmf_inspector **out) {
    if (!out) return fail(NPGMF_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    if (!bundle_dir) return fail(NPGMF_INVALID_ARGUMENT, "bundle_dir is NULL");
    npgmf_open_options defaults;
    npgmf_open_options_init_sized(&defaults, sizeof defaults);
    if (options && options->struct_size < kOptionsV1)
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_open_options.struct_size is " + std::to_string(options->struct_size) +
                                                ", smaller than any npgmf_open_options (" + std::to_string(kOptionsV1) +
                                                "); call npgmf_open_options_init first");
    const npgmf_open_options &o = options ? *options : defaults;
    if (o.threads < 0 || o.max_pixels < 0 || (o.self_test != 0 && o.self_test != 1))
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_open_options: threads and max_pixels must be >= 0, self_test 0 or 1");
    const char *trust = o.struct_size >= kOptionsTrust ? o.trust : nullptr;
    if (trust && !*trust)  // never "checked" by a string that names nothing
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_open_options.trust is empty: name a public key file or a folder of them, or pass NULL");
    return guarded([&] {
        npgmf::OpenOptions opened;
        opened.precision = o.precision ? o.precision : "";
        opened.fallback = o.fallback ? o.fallback : "";
        opened.device = o.device ? o.device : "cpu";
        opened.threads = o.threads;
        opened.self_test = o.self_test == 1;
        if (trust) opened.trust = trust;
        auto handle = std::make_unique<npgmf_inspector>();
        handle->inspector = npgmf::Inspector::open(bundle_dir, opened);
        if (o.max_pixels > 0) handle->max_pixels = o.max_pixels;
        *out = handle.release();
        return ok();
    });
}

npgmf_status npgmf_inspect_rgb(npgmf_inspector *inspector, const uint8_t *pixels, int32_t height, int32_t width,
                               size_t row_stride, npgmf_result *result) {
    if (npgmf_status status = check_result(result); status != NPGMF_OK) return status;
    if (!inspector) return fail(NPGMF_INVALID_ARGUMENT, "inspector is NULL");
    clear_result(result, inspector->inspector->calibration().threshold);
    if (!pixels) return fail(NPGMF_INVALID_ARGUMENT, "pixels is NULL");
    if (height < 1 || width < 1 || row_stride < 3 * static_cast<size_t>(width))
        return fail(NPGMF_INVALID_ARGUMENT, "an image must be RGB uint8 with height and width >= 1 and a row stride >= 3 x width, got " +
                                                std::to_string(height) + "x" + std::to_string(width) + ", stride " + std::to_string(row_stride));
    return guarded([&] {
        const cv::Mat rgb(height, width, CV_8UC3, const_cast<uint8_t *>(pixels), row_stride);
        return inspect(inspector, rgb, result);
    });
}

npgmf_status npgmf_inspect_encoded(npgmf_inspector *inspector, const void *data, size_t size, npgmf_result *result) {
    if (npgmf_status status = check_result(result); status != NPGMF_OK) return status;
    if (!inspector) return fail(NPGMF_INVALID_ARGUMENT, "inspector is NULL");
    clear_result(result, inspector->inspector->calibration().threshold);
    if (!data && size) return fail(NPGMF_INVALID_ARGUMENT, "data is NULL");
    return guarded([&] {
        const auto *bytes = static_cast<const unsigned char *>(data);
        const std::vector<unsigned char> encoded(bytes, bytes + size);
        return inspect(inspector, npgmf::decode_bytes(encoded, inspector->max_pixels, "image"), result);
    });
}

npgmf_status npgmf_inspect_file(npgmf_inspector *inspector, const char *path, npgmf_result *result) {
    if (npgmf_status status = check_result(result); status != NPGMF_OK) return status;
    if (!inspector) return fail(NPGMF_INVALID_ARGUMENT, "inspector is NULL");
    clear_result(result, inspector->inspector->calibration().threshold);
    if (!path) return fail(NPGMF_INVALID_ARGUMENT, "path is NULL");
    return guarded([&] { return inspect(inspector, npgmf::decode_file(path, inspector->max_pixels), result); });
}

npgmf_status npgmf_describe(const npgmf_inspector *inspector, npgmf_info *info) {
    if (!info) return fail(NPGMF_INVALID_ARGUMENT, "info is NULL");
    if (info->struct_size < kInfoV1)
        return fail(NPGMF_INVALID_ARGUMENT, "npgmf_info.struct_size is " + std::to_string(info->struct_size) +
                                                ", smaller than any npgmf_info (" + std::to_string(kInfoV1) + "); set it to sizeof(npgmf_info)");
    if (!inspector) return fail(NPGMF_INVALID_ARGUMENT, "inspector is NULL");
    return guarded([&] {
        const npgmf::Inspector &in = *inspector->inspector;
        copy(info->precision, sizeof info->precision, in.precision());
        copy(info->requested_precision, sizeof info->requested_precision, in.requested_precision());
        copy(info->knn, sizeof info->knn, in.manifest().knn);
        copy(info->backend, sizeof info->backend, in.backend());
        copy(info->fallback_reason, sizeof info->fallback_reason, in.fallback_reason());
        info->image_size = in.manifest().image_size;
        info->threshold = in.calibration().threshold;
        info->self_test_ran = in.self_test().ran ? 1 : 0;
        const npgmf::SelfTestResult &test = in.self_test();
        info->self_test_score_error = test.score_error;
        info->self_test_budget = test.budget;
        info->self_test_map_error = test.map_budget < 0 ? NAN : test.map_error;
        info->self_test_map_budget = test.map_budget < 0 ? NAN : test.map_budget;
        info->self_test_verdict_flips = test.verdict_flips;
        info->self_test_max_flips = test.max_flips;
        if (info->struct_size >= kInfoSignature) {  // an older caller's struct ends before these
            info->signature_verified = in.manifest().signed_by.empty() ? 0 : 1;
            copy(info->signed_by, sizeof info->signed_by, in.manifest().signed_by);
        }
        return ok();
    });
}

void npgmf_close(npgmf_inspector *inspector) { delete inspector; }

}  // extern "C"
