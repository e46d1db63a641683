// The native inspector: runtime/inspector.py's Inspector over the same bundle.
//
//   open: read_manifest (schema, SHA-256 of every file, paths, coreset vs graph)
//         -> an ONNX Runtime session for the precision (CPU, CUDA or TensorRT execution provider)
//         -> knn "faiss": coreset.faiss read with FAISS (size checked first)
//         -> the golden self-test; refused with the reason, or answered by the fallback precision
//   inspect: RGB uint8 -> to_model_input -> graph
//         knn "graph": the graph returns the fused map and the image score
//         knn "faiss": patch features -> FAISS k=1 search, exact distances -> bilinear resize -> Eq. 11 + smoothing
//      -> score, threshold, verdict, fused map resized to the image's own size
//
// Every member is read-only after open, so one Inspector serves any number of threads (ONNX Runtime's
// Session::Run and FAISS's search are thread-safe), and each call gives what it gives sequentially.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "bundle.h"

namespace npgmf {

struct OpenOptions {
    std::string precision, fallback, device = "cpu";
    int threads = 0;
    bool self_test = true;
    std::string trust;  // a public key PEM or a folder of them; empty: signatures not checked
};

// What the self-test measured here against the FP32 reference (runtime/selftest.SelfTestResult).
struct SelfTestResult {
    bool ran = false;
    int images = 0;
    double score_error = 0, budget = 0;   // mean |score here - FP32 score|, and what is allowed
    double map_error = -1, map_budget = -1;  // mean |digest here - FP32 digest|; -1: not checked
    int verdict_flips = -1, max_flips = -1;  // -1: not checked
    bool passed() const {  // a NaN error (non-finite output) fails: comparisons with NaN are false
        return score_error <= budget && (map_budget < 0 || map_error <= map_budget) &&
               (max_flips < 0 || verdict_flips <= max_flips);
    }
};

// Seconds per stage of one or more calls, as `npgmf-edge bench` names them.
struct Stages {
    double decode = 0, preprocess = 0, graph = 0, knn = 0, post = 0;
};

class Engine;  // one precision's graph session (+ coreset)

class Inspector {
  public:
    static std::unique_ptr<Inspector> open(const std::string &bundle, const OpenOptions &options);
    ~Inspector();

    // (batch, 3, S, S) float32 -> per image its score and fused (S, S) map.
    void run(const float *pixels, int batch, std::vector<float> &scores, std::vector<float> &fused,
             Stages *stages = nullptr) const;

    // One RGB image: score, and the fused map at the image's size into `map` (height x width floats) when
    // given.
    float inspect(const cv::Mat &rgb, float *map, Stages *stages = nullptr) const;

    const Manifest &manifest() const { return manifest_; }
    const Calibration &calibration() const { return manifest_.calibration.at(precision_); }
    const std::string &precision() const { return precision_; }
    const std::string &requested_precision() const { return requested_; }
    const std::string &fallback_reason() const { return fallback_reason_; }
    const SelfTestResult &self_test() const { return self_test_; }
    std::string backend() const;

  private:
    Inspector(Manifest manifest, std::string precision, std::unique_ptr<Engine> engine);
    std::string run_self_test();  // "" when it passes (or the bundle has none), else the one-line reason

    Manifest manifest_;
    std::string precision_, requested_, fallback_reason_;
    std::unique_ptr<Engine> engine_;
    SelfTestResult self_test_;
};

// "x86_64 with avx2, fma (no VNNI); onnxruntime 1.32.0, faiss 1.7.3": this machine as
// platform_facts.describe writes a machine.
std::string describe_this_machine();
std::string onnxruntime_version();
std::string faiss_version();

}  // namespace npgmf
