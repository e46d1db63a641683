// The bundle manifest as runtime/manifest.py reads it: schema version and migrations, the manifest's own
// content hash, the SHA-256 of every file, plain file names inside the bundle, graphs, calibrations, the
// coreset and the self-test section, each checked as the Python reader checks it, with the same messages.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "npgmf/npgmf.h"
#include "selftest_margins.h"  // generated from npgmf_edge/runtime/selftest_margins.json

namespace npgmf {

constexpr int kSchemaVersion = 3;
constexpr int kSelftestRequiredFrom = 2;
constexpr const char *kManifestFile = "manifest.json";
constexpr const char *kCoresetFaiss = "coreset.faiss";

// An error with the C status it becomes and a one-line message.
class Error : public std::runtime_error {
  public:
    Error(npgmf_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    npgmf_status status() const { return status_; }

  private:
    npgmf_status status_;
};

struct BranchStats {
    double mean = 0, std = 1;
};

struct Calibration {
    BranchStats structural, logical;
    double weight_structural = 1, weight_logical = 1, gaussian_sigma = 0, threshold = 0, false_alarm_rate = 0;
    std::string fusion_level = "pixel";
    std::optional<BranchStats> structural_image, logical_image;
};

struct GraphSpec {
    std::string file, precision, input_name;
    std::vector<int64_t> input_shape;                         // (3, S, S)
    std::map<std::string, std::vector<int64_t>> outputs;      // shapes without the batch axis
};

// The golden self-test (runtime/selftest.py, schema 3): each precision judged against the FP32 reference.
struct SelftestPrecision {
    std::vector<double> scores;          // this precision's scores on the export machine (reported only)
    double budget = 0;                   // mean |score - FP32 reference| allowed
    std::optional<double> map_budget;    // mean |digest - FP32 digest| allowed; none: no map check
    std::optional<int> max_flips;        // verdicts allowed to differ from FP32's; none: no flip check
};

struct Selftest {
    std::string pixels_file, reference_maps_file, legacy_file;  // .npy files, or (schema <= 2) one .npz
    int images = 0;
    int digest_grid = 8;
    std::vector<double> reference;                  // FP32 scores
    std::optional<double> reference_threshold;      // FP32 calibration's threshold
    std::map<std::string, SelftestPrecision> precisions;
    nlohmann::json machine;
};

struct Coreset {
    int64_t count = 0, dim = 0;
    std::string search = "exact";
};

struct Manifest {
    std::filesystem::path root;
    int schema_version = 0;
    std::string knn;
    int image_size = 0, max_batch = 0;
    std::map<std::string, GraphSpec> graphs;
    std::map<std::string, Calibration> calibration;
    std::optional<Coreset> coreset;
    std::optional<Selftest> selftest;
    nlohmann::json raw;
    std::string signed_by;  // the trusted key's id (SHA-256 of the raw public key) when opened with trust

    std::vector<std::string> precisions() const;  // in the order fp32, fp16, int8
    std::string sha256_of(const std::string &file) const;
};

std::string sha256_file(const std::filesystem::path &path);
std::string sha256_text(const std::string &text);  // hex, of these bytes
// `trust`: a public key PEM file or a folder of them (runtime/signing.py); empty: signatures not checked.
Manifest read_manifest(const std::filesystem::path &root, const std::filesystem::path &trust = {});


// selftest.budget_for: the error the export measured plus the precision's margin.
double budget_for(const std::string &precision, double measured);
// selftest.score_error: mean |a - b|, NaN when any is not finite.
double mean_abs_error(const std::vector<double> &a, const std::vector<double> &b);
// selftest.verdict_flips: images anomalous by one (scores, threshold) and normal by the other.
int verdict_flips(const std::vector<double> &scores, double threshold, const std::vector<double> &reference,
                  double reference_threshold);

}  // namespace npgmf
