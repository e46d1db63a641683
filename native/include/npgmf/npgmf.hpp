// A thin C++17 layer over npgmf.h: an owning handle (RAII, movable) and exceptions that carry the C call's
// status and its one-line message. Header-only; it adds nothing to the ABI.
//
//   npgmf::Inspector inspector("bundles/tray", npgmf::Options().precision("int8").fallback("fp32"));
//   npgmf::Result r = inspector.inspect_file("part.png", /*with_map=*/true);
//   if (r.verdict == NPGMF_VERDICT_ANOMALOUS) ...  r.map holds r.height x r.width floats
#ifndef NPGMF_HPP
#define NPGMF_HPP

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "npgmf.h"

namespace npgmf {

class Error : public std::runtime_error {
  public:
    Error(npgmf_status status, const char *message) : std::runtime_error(message), status_(status) {}
    npgmf_status status() const noexcept { return status_; }

  private:
    npgmf_status status_;
};

inline void check(npgmf_status status) {
    if (status != NPGMF_OK) throw Error(status, npgmf_last_error());
}

class Options {
  public:
    Options() { npgmf_open_options_init(&raw_); }
    Options &precision(std::string value) { precision_ = std::move(value); return *this; }
    Options &fallback(std::string value) { fallback_ = std::move(value); return *this; }
    Options &device(std::string value) { device_ = std::move(value); return *this; }
    Options &threads(int32_t value) { raw_.threads = value; return *this; }
    Options &self_test(bool value) { raw_.self_test = value ? 1 : 0; return *this; }
    Options &max_pixels(int64_t value) { raw_.max_pixels = value; return *this; }
    // A public key PEM file or a folder of them: open only bundles signed by one (docs/SECURITY.md).
    Options &trust(std::string value) { trust_ = std::move(value); return *this; }
    const npgmf_open_options *get() {
        raw_.precision = precision_.empty() ? nullptr : precision_.c_str();
        raw_.fallback = fallback_.empty() ? nullptr : fallback_.c_str();
        raw_.device = device_.empty() ? nullptr : device_.c_str();
        raw_.trust = trust_.empty() ? nullptr : trust_.c_str();
        return &raw_;
    }

  private:
    npgmf_open_options raw_{};
    std::string precision_, fallback_, device_, trust_;
};

struct Result {
    double score = 0, threshold = 0;
    npgmf_verdict verdict = NPGMF_VERDICT_ERROR;
    int32_t height = 0, width = 0;
    std::vector<float> map;  // height x width, row-major; empty unless asked for
};

class Inspector {
  public:
    explicit Inspector(const std::string &bundle, Options options = Options()) {
        check(npgmf_open(bundle.c_str(), options.get(), &handle_));
    }
    Inspector(Inspector &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Inspector &operator=(Inspector &&other) noexcept {
        if (this != &other) {
            npgmf_close(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    Inspector(const Inspector &) = delete;
    Inspector &operator=(const Inspector &) = delete;
    ~Inspector() { npgmf_close(handle_); }

    // Safe to call from several threads on one Inspector.
    Result inspect_rgb(const uint8_t *pixels, int32_t height, int32_t width, size_t row_stride, bool with_map = false) const {
        return call(height, width, with_map, [&](npgmf_result *r) {
            return npgmf_inspect_rgb(handle_, pixels, height, width, row_stride, r);
        });
    }
    Result inspect_encoded(const void *data, size_t size, int32_t height_hint = 0, int32_t width_hint = 0) const {
        // With size hints (the image's height and width) the map is returned too.
        return call(height_hint, width_hint, height_hint > 0 && width_hint > 0,
                    [&](npgmf_result *r) { return npgmf_inspect_encoded(handle_, data, size, r); });
    }
    Result inspect_file(const std::string &path) const {
        return call(0, 0, false, [&](npgmf_result *r) { return npgmf_inspect_file(handle_, path.c_str(), r); });
    }
    npgmf_info describe() const {
        npgmf_info info{};
        info.struct_size = sizeof info;
        check(npgmf_describe(handle_, &info));
        return info;
    }
    npgmf_inspector *get() const noexcept { return handle_; }

  private:
    template <typename F>
    Result call(int32_t height, int32_t width, bool with_map, F &&body) const {
        npgmf_result raw;
        npgmf_result_init(&raw);
        Result out;
        if (with_map) {
            out.map.resize(static_cast<size_t>(height) * static_cast<size_t>(width));
            raw.map = out.map.data();
            raw.map_capacity = out.map.size();
        }
        check(body(&raw));
        out.score = raw.score;
        out.threshold = raw.threshold;
        out.verdict = static_cast<npgmf_verdict>(raw.verdict);
        out.height = raw.map_height;
        out.width = raw.map_width;
        return out;
    }

    npgmf_inspector *handle_ = nullptr;
};

inline int32_t abi_version() { return npgmf_abi_version(); }

}  // namespace npgmf

#endif  // NPGMF_HPP
