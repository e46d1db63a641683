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

namespace npgmf {

constexpr int kSchemaVersion = 2;
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

struct SelftestPrecision {
    std::vector<double> scores;
    double tolerance = 0;
};

struct Selftest {
    std::string file;
    int images = 0;
    int digest_grid = 8;
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

    std::vector<std::string> precisions() const;  // in the order fp32, fp16, int8
    std::string sha256_of(const std::string &file) const;
};

std::string sha256_file(const std::filesystem::path &path);
Manifest read_manifest(const std::filesystem::path &root);

// `selftest.tolerance_for`: what the export's own measurement allows for `precision`.
double tolerance_for(const std::string &precision, const std::vector<double> &scores,
                     const std::vector<double> &reference);

}  // namespace npgmf
