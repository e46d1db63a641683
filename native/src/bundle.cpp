#include "bundle.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <tuple>
#include <sstream>

#include "pyjson.h"
#include "signing.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace npgmf {
namespace {

constexpr size_t kMaxManifestBytes = 16u << 20;
constexpr int kMaxNesting = 32;
constexpr int kMaxInputSize = 8192;
constexpr int kMaxBatch = 4096;
constexpr int kMaxGoldenImages = 256;
constexpr const char *kSelfHashKey = "manifest_sha256";
const char *const kPrecisions[] = {"fp32", "fp16", "int8"};
constexpr const char *kLegacySelftest = "selftest.npz";

// A value the manifest holds in the wrong shape: turned into "... is malformed (...); re-export".
struct Malformed : std::runtime_error {
    using std::runtime_error::runtime_error;
};

Error bundle_error(const std::string &message) { return Error(NPGMF_BUNDLE_ERROR, message); }

std::string quoted(const std::string &text) { return "'" + text + "'"; }

// Python's repr() of a JSON value as the Python reader's messages show it ({name!r}).
std::string py_repr(const json &value) {
    if (!value.is_string()) return value.is_null() ? "None" : value.is_boolean() ? (value.get<bool>() ? "True" : "False") : value.dump();
    const std::string &text = value.get_ref<const std::string &>();
    const char quote = text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, quote);
    for (const char c : text) {
        if (c == '\\' || c == quote) out += '\\';
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else out += c;
    }
    return out + quote;
}

// The key as a C string: a std::string parameter, built from the literal at each call, would be a temporary
// that GCC 13+ (-Wdangling-reference) suspects the returned reference of pointing into.
const json &at(const json &object, const char *key) {
    if (!object.is_object()) throw Malformed("expected an object holding " + quoted(key));
    auto found = object.find(key);
    if (found == object.end()) throw Malformed("KeyError: " + quoted(key));
    return *found;
}

double finite(const json &value, const std::string &name) {
    if (!value.is_number()) throw Malformed(name + " must be a finite number, got " + value.dump());
    const double number = value.get<double>();
    if (!std::isfinite(number)) throw Malformed(name + " must be a finite number");
    return number;
}

int bounded_int(const json &value, const std::string &name, int64_t upper, int64_t lower = 1) {
    if (!(value.is_number_integer() || value.is_number_unsigned()) || value.get<int64_t>() < lower ||
        value.get<int64_t>() > upper)
        throw Malformed(name + " must be an integer in " + std::to_string(lower) + ".." + std::to_string(upper) +
                        ", got " + value.dump());
    return static_cast<int>(value.get<int64_t>());
}

int64_t bounded_int64(const json &value, const std::string &name, int64_t upper) {
    if (!(value.is_number_integer() || value.is_number_unsigned()) || value.get<int64_t>() < 1 ||
        value.get<int64_t>() > upper)
        throw Malformed(name + " must be an integer in 1.." + std::to_string(upper) + ", got " + value.dump());
    return value.get<int64_t>();
}

std::vector<int64_t> shape(const json &value, const std::string &name) {
    if (!value.is_array() || value.size() > 4)
        throw Malformed(name + " must be a list of at most 4 sizes, got " + value.dump());
    std::vector<int64_t> out;
    for (const auto &v : value) out.push_back(bounded_int(v, name, 1 << 20));
    return out;
}

std::string as_string(const json &value, const std::string &name) {
    if (!value.is_string()) throw Malformed(name + " must be a string, got " + value.dump());
    return value.get<std::string>();
}

// How deep `[` and `{` nest, brackets inside strings not counted: linear, before anything recurses.
int nesting_depth(const std::string &text) {
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
            continue;
        }
        if (c == '"') in_string = true;
        else if (c == '[' || c == '{') deepest = std::max(deepest, ++depth);
        else if (c == ']' || c == '}') --depth;
    }
    return deepest;
}

std::string to_hex(const unsigned char *digest, unsigned length) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned k = 0; k < length; ++k) {
        out += hex[digest[k] >> 4];
        out += hex[digest[k] & 15];
    }
    return out;
}

}  // namespace

std::string sha256_text(const std::string &text) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr) != 1)
        throw Error(NPGMF_INTERNAL, "OpenSSL's SHA-256 failed");
    return to_hex(digest, length);
}

namespace {

BranchStats branch_stats(const json &value, const std::string &name) {
    if (!value.is_object() || value.size() != 2 || !value.contains("mean") || !value.contains("std"))
        throw Malformed(name + " must hold exactly mean and std, got " + value.dump());
    return {finite(value["mean"], name + ".mean"), finite(value["std"], name + ".std")};
}

// Calibration.from_dict plus manifest._calibration's ranges.
Calibration calibration(const std::string &precision, const json &entry) {
    static const std::set<std::string> choice = {"fusion_level", "structural_image", "logical_image",
                                                  "fusion_selection"};
    static const std::set<std::string> legacy = {"structural", "logical", "weight_structural",
                                                 "weight_logical", "gaussian_sigma", "threshold",
                                                 "false_alarm_rate", "n_validation_images"};
    if (!entry.is_object()) throw Malformed("expected a JSON object for calibration." + precision);
    std::set<std::string> keys;
    for (const auto &item : entry.items()) keys.insert(item.key());
    std::set<std::string> names = legacy;
    names.insert(choice.begin(), choice.end());
    const bool is_legacy = keys == legacy;
    if (!is_legacy && keys != names) throw Malformed("calibration." + precision + ": missing or unknown keys");
    Calibration c;
    c.structural = branch_stats(entry["structural"], "structural");
    c.logical = branch_stats(entry["logical"], "logical");
    c.weight_structural = finite(entry["weight_structural"], "weight_structural");
    c.weight_logical = finite(entry["weight_logical"], "weight_logical");
    c.gaussian_sigma = finite(entry["gaussian_sigma"], "gaussian_sigma");
    c.threshold = finite(entry["threshold"], "threshold");
    c.false_alarm_rate = finite(entry["false_alarm_rate"], "false_alarm_rate");
    finite(entry["n_validation_images"], "n_validation_images");
    if (!is_legacy) {
        c.fusion_level = as_string(entry["fusion_level"], "fusion_level");
        if (c.fusion_level != "pixel" && c.fusion_level != "image")
            throw Malformed("fusion_level must be one of ('pixel', 'image'), got " + entry["fusion_level"].dump());
        if (!entry["structural_image"].is_null())
            c.structural_image = branch_stats(entry["structural_image"], "structural_image");
        if (!entry["logical_image"].is_null()) c.logical_image = branch_stats(entry["logical_image"], "logical_image");
        if (c.fusion_level == "image" && (!c.structural_image || !c.logical_image))
            throw Malformed("fusion_level 'image' needs structural_image and logical_image statistics");
    }
    std::vector<double> stds = {c.structural.std, c.logical.std};
    if (c.structural_image) stds.push_back(c.structural_image->std);
    if (c.logical_image) stds.push_back(c.logical_image->std);
    if (*std::min_element(stds.begin(), stds.end()) <= 0 ||
        std::min({c.weight_structural, c.weight_logical, c.gaussian_sigma}) < 0 || c.false_alarm_rate < 0 ||
        c.false_alarm_rate > 1)
        throw Malformed("calibration." + precision + " is out of range");
    return c;
}

std::vector<double> finite_list(const json &value, const std::string &name, size_t length) {
    if (!value.is_array() || value.size() != length)
        throw Malformed(name + " must be a list of " + std::to_string(length) + " numbers");
    std::vector<double> out;
    for (const auto &v : value) {
        if (!v.is_number() || !std::isfinite(v.get<double>())) throw Malformed(name + " must hold finite numbers only");
        out.push_back(v.get<double>());
    }
    return out;
}

// Every file the manifest names (graphs, coreset, self-test, engines) and every hashed one: a plain file
// name, hashed, and a file that does not resolve outside the bundle.
void check_named_files(const fs::path &root, const json &data, const fs::path &manifest_path) {
    const json &files = at(data, "files");
    if (!files.is_object()) throw Malformed("files must map file names to SHA-256 digests");
    for (const auto &item : files.items())
        if (!item.value().is_string()) throw Malformed("files must map file names to SHA-256 digests");
    std::vector<std::pair<std::string, json>> named;
    for (const auto &item : at(data, "graphs").items())
        named.emplace_back("graphs." + item.key() + ".file", at(item.value(), "file"));
    if (data.contains("coreset") && data["coreset"].is_object() && data["coreset"].contains("files")) {
        const json &list = data["coreset"]["files"];
        if (!list.is_array()) throw Malformed("coreset.files must be a list");
        for (size_t k = 0; k < list.size(); ++k) named.emplace_back("coreset.files[" + std::to_string(k) + "]", list[k]);
    }
    if (data.contains("selftest") && data["selftest"].is_object())
        for (const char *key : {"pixels", "reference_maps", "legacy_file"})
            if (data["selftest"].contains(key)) named.emplace_back(std::string("selftest.") + key, data["selftest"][key]);
    if (data.contains("engines") && data["engines"].is_object())
        for (const auto &item : data["engines"].items())
            named.emplace_back("engines." + item.key() + ".file", at(item.value(), "file"));
    std::vector<std::pair<std::string, json>> every = named;
    for (const auto &item : files.items()) every.emplace_back("files['" + item.key() + "']", json(item.key()));
    std::error_code ec;
    const fs::path inside = fs::canonical(root, ec);
    for (size_t k = 0; k < every.size(); ++k) {
        const auto &[where, value] = every[k];
        const std::string name = value.is_string() ? value.get<std::string>() : "";
        if (!value.is_string() || name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
            name.find('\0') != std::string::npos)
            throw bundle_error(manifest_path.string() + ": " + where + " is " + py_repr(value) +
                               ", not a plain file name inside the bundle (no folders, '..' or absolute paths); "
                               "re-export the bundle");
        if (k < named.size() && !files.contains(name))
            throw bundle_error(manifest_path.string() + ": " + where + " names " + name +
                               ", which is not among the hashed files; re-export the bundle");
        std::error_code error;
        const fs::path target = fs::weakly_canonical(root / name, error);
        if (error || target.parent_path() != inside)
            throw bundle_error((root / name).string() + " leads outside the bundle (to " + target.string() +
                               "); a bundle holds its own files, re-export it");
    }
}

void verify_files(const fs::path &root, const json &files) {
    for (const auto &item : files.items()) {
        const fs::path path = root / item.key();
        std::error_code ec;
        if (!fs::is_regular_file(path, ec))
            throw bundle_error(path.string() + " is missing from the bundle; re-export it with `npgmf-edge export`");
        if (sha256_file(path) != item.value().get<std::string>())
            throw bundle_error(path.string() + " does not match the SHA-256 recorded in " + (root / kManifestFile).string() +
                               " (damaged or changed after export); re-export the bundle with `npgmf-edge export`");
    }
}

std::vector<double> numbers(const json &value, const std::string &name) {
    if (!value.is_array()) throw Malformed(name + " must be a list of numbers");
    std::vector<double> out;
    for (const auto &v : value) {
        if (!v.is_number()) throw Malformed(name + " must be a list of numbers");
        out.push_back(v.get<double>());
    }
    return out;
}

// Schema 2 -> 3 (manifest._from_schema_2): the self-test judged against the FP32 reference; the budgets
// from the stored scores, the flips from the FP32 calibration's threshold, the map check only for fp32
// (the archive holds the FP32 digest only where the bundle has fp32). No FP32 answer: no self-test.
void from_schema_2(json &data) {
    if (!data.contains("selftest") || !data["selftest"].is_object()) return;
    json &entry = data["selftest"];
    if (!entry.contains("precisions") || !entry["precisions"].is_object()) return;
    json &precisions = entry["precisions"];
    json reference = entry.contains("reference") && !entry["reference"].is_null() ? entry["reference"] : json();
    if (reference.is_null() && precisions.contains("fp32") && precisions["fp32"].is_object() && precisions["fp32"].contains("scores"))
        reference = precisions["fp32"]["scores"];
    if (!reference.is_array()) {
        data.erase("selftest");
        return;
    }
    json reference_threshold;
    if (data.contains("calibration") && data["calibration"].is_object() && data["calibration"].contains("fp32") &&
        data["calibration"]["fp32"].is_object() && data["calibration"]["fp32"].contains("threshold"))
        reference_threshold = data["calibration"]["fp32"]["threshold"];
    entry["legacy_file"] = entry.contains("file") ? entry["file"] : json(kLegacySelftest);
    entry.erase("file");
    entry["reference"] = reference;
    entry["reference_threshold"] = reference_threshold;
    const std::vector<double> ref = numbers(reference, "selftest.reference");
    for (auto &item : precisions.items()) {
        json &expected = item.value();
        const std::string &precision = item.key();
        const std::vector<double> scores = numbers(at(expected, "scores"), "selftest.precisions." + precision + ".scores");
        const double error = mean_abs_error(scores, ref);
        expected["score_error"] = error;
        expected["budget"] = budget_for(precision, error);
        expected["map_error"] = nullptr;
        expected["map_budget"] = nullptr;
        expected["verdict_flips"] = nullptr;
        expected["max_flips"] = nullptr;
        if (precision == "fp32") {
            expected["map_error"] = 0.0;
            expected["map_budget"] = budget_for("fp32", 0.0);
        }
        if (!reference_threshold.is_null()) {
            const double threshold = finite(at(at(at(data, "calibration"), precision.c_str()), "threshold"), "threshold");
            const int flips = verdict_flips(scores, threshold, ref, finite(reference_threshold, "threshold"));
            expected["verdict_flips"] = flips;
            expected["max_flips"] = flips + kFlipAllowance;
        }
        expected.erase("tolerance");
    }
}

// Schema 1 -> 2 reads a legacy calibration as pixel-level fusion (calibration() does that per entry);
// 2 -> 3 is from_schema_2.
json migrate(json data, const fs::path &path) {
    const json &version = data.contains("schema_version") ? data["schema_version"] : json();
    if (!version.is_number_integer() || version.get<int64_t>() < 1)
        throw bundle_error(path.string() + ": schema_version " + py_repr(version) + " is not a positive integer; re-export");
    if (version.get<int64_t>() > kSchemaVersion)
        throw bundle_error(path.string() + " has schema_version " + std::to_string(version.get<int64_t>()) +
                           ", newer than this toolkit reads (" + std::to_string(kSchemaVersion) +
                           "); upgrade npgmf-edge on this station, or export the bundle with the version installed here");
    if (version.get<int64_t>() < 3) from_schema_2(data);
    data["schema_version"] = kSchemaVersion;
    return data;
}

double non_negative(const json &value, const std::string &name) {
    if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() < 0)
        throw Malformed(name + " must be a finite number >= 0, got " + py_repr(value));
    return value.get<double>();
}

std::string g4(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.4g", value);
    return buffer;
}

// manifest._check_selftest (schema 3): a self-test for every graph from schema 2 on; every budget at most
// what the export's measurement allows, so none can be raised at will.
void check_selftest(Manifest &m, const fs::path &path, int exported_schema) {
    const json &raw = m.raw;
    const bool older = exported_schema < kSelftestRequiredFrom;
    if (!raw.contains("selftest") || raw["selftest"].is_null() || (raw["selftest"].is_object() && raw["selftest"].empty())) {
        if (!older)
            throw bundle_error(path.string() + " has no selftest section, which schema " + std::to_string(m.schema_version) +
                               " requires (deleted after export?); re-export the bundle");
        return;
    }
    const json &entry = raw["selftest"];
    if (!entry.is_object() || !entry.contains("precisions") || !entry["precisions"].is_object())
        throw Malformed("selftest must be an object with precisions");
    Selftest st;
    st.images = bounded_int(at(entry, "images"), "selftest.images", kMaxGoldenImages);
    st.digest_grid = entry.contains("digest_grid") ? bounded_int(entry["digest_grid"], "selftest.digest_grid", 64) : kDigestGrid;
    st.machine = entry.contains("machine") ? entry["machine"] : json::object();
    if (entry.contains("legacy_file")) st.legacy_file = as_string(entry["legacy_file"], "selftest.legacy_file");
    else {
        st.pixels_file = as_string(at(entry, "pixels"), "selftest.pixels");
        st.reference_maps_file = as_string(at(entry, "reference_maps"), "selftest.reference_maps");
    }
    for (const auto &item : m.graphs)
        if (!entry["precisions"].contains(item.first) && !older)
            throw bundle_error(path.string() + ": no self-test for " + item.first + "; re-export the bundle");
    if (!entry.contains("reference") || entry["reference"].is_null())
        throw bundle_error(path.string() + ": the selftest section lacks its FP32 reference scores; re-export");
    st.reference = finite_list(entry["reference"], "selftest.reference", static_cast<size_t>(st.images));
    if (entry.contains("reference_threshold") && !entry["reference_threshold"].is_null()) {
        const json &value = entry["reference_threshold"];
        if (!value.is_number() || !std::isfinite(value.get<double>()))
            throw Malformed("selftest.reference_threshold must be a finite number, got " + py_repr(value));
        st.reference_threshold = value.get<double>();
    }
    for (const auto &item : entry["precisions"].items()) {
        const std::string &precision = item.key();
        const std::string name = "selftest.precisions." + precision;
        if (!m.graphs.count(precision) || !item.value().is_object()) throw Malformed(name + ": no such graph, or not an object");
        const json &expected = item.value();
        SelftestPrecision p;
        p.scores = finite_list(at(expected, "scores"), name + ".scores", static_cast<size_t>(st.images));
        p.budget = non_negative(at(expected, "budget"), name + ".budget");
        std::vector<std::tuple<std::string, double, double>> allowed = {
            {"budget", p.budget, budget_for(precision, mean_abs_error(p.scores, st.reference))}};
        const json map_error = expected.contains("map_error") ? expected["map_error"] : json();
        const json map_budget = expected.contains("map_budget") ? expected["map_budget"] : json();
        const double measured_map = map_error.is_null() ? 0.0 : non_negative(map_error, name + ".map_error");
        if (!map_budget.is_null()) {
            p.map_budget = non_negative(map_budget, name + ".map_budget");
            allowed.emplace_back("map budget", *p.map_budget, budget_for(precision, measured_map));
        }
        if (st.reference_threshold) {
            p.max_flips = bounded_int(at(expected, "max_flips"), name + ".max_flips", st.images, 0);
            const int flips = verdict_flips(p.scores, m.calibration.at(precision).threshold, st.reference, *st.reference_threshold);
            allowed.emplace_back("verdict allowance", *p.max_flips, flips + kFlipAllowance);
        }
        for (const auto &[what, value, bound] : allowed)
            if (!(value <= bound * (1 + 1e-9)))
                throw bundle_error(path.string() + ": the " + precision + " self-test " + what + " " + g4(value) +
                                   " is above what the export measured allows (" + g4(bound) +
                                   "); the manifest was edited, re-export the bundle");
        st.precisions[precision] = p;
    }
    m.selftest = st;
}

void check_consistency(const Manifest &m, const fs::path &path) {
    for (const auto &item : m.graphs)
        if (std::find(std::begin(kPrecisions), std::end(kPrecisions), item.first) == std::end(kPrecisions))
            throw bundle_error(path.string() + ": graphs must be some of fp32, fp16, int8, got " + item.first);
    if (m.graphs.empty()) throw bundle_error(path.string() + ": graphs must be some of fp32, fp16, int8, got none");
    for (const auto &item : m.graphs)
        if (!m.calibration.count(item.first))
            throw bundle_error(path.string() + ": no calibration for precision(s) " + item.first + "; re-export");
    const int64_t size = m.image_size;
    for (const auto &item : m.graphs)
        if (item.second.input_shape != std::vector<int64_t>{3, size, size})
            throw bundle_error(path.string() + ": " + item.second.file + " takes another input than input.size " +
                               std::to_string(size) + " (expected [3, " + std::to_string(size) + ", " +
                               std::to_string(size) + "]); re-export the bundle");
    if (m.knn == "faiss") {
        if (!m.coreset) throw bundle_error(path.string() + ": a knn 'faiss' bundle needs a coreset entry; re-export");
        const json &files = m.raw["coreset"].contains("files") ? m.raw["coreset"]["files"] : json::array();
        if (std::find(files.begin(), files.end(), json(kCoresetFaiss)) == files.end())
            throw bundle_error(path.string() + ": the coreset entry does not list coreset.faiss; re-export");
        for (const auto &item : m.graphs) {
            auto found = item.second.outputs.find("patch_features");
            if (found == item.second.outputs.end() || found->second.empty())
                throw Malformed(item.second.file + " has no patch_features output");
            if (found->second[0] != m.coreset->dim)
                throw bundle_error(path.string() + ": " + item.second.file + " yields " + std::to_string(found->second[0]) +
                                   "-dim patch features but the coreset has dimension " + std::to_string(m.coreset->dim) +
                                   "; the files come from different exports, re-export the bundle");
        }
    }
}

// manifest._load_json: the manifest's bytes read once, so that the signature (with `trust`), the nesting
// bound and the parse all see the same bytes.
json load_json(const fs::path &root, const fs::path &path, const fs::path &trust, std::string &key_id) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw bundle_error("cannot read " + path.string() + " (" + ec.message() + "); re-export the bundle");
    if (size > kMaxManifestBytes)
        throw bundle_error(path.string() + " is " + std::to_string(size) + " bytes, not a manifest (at most " +
                           std::to_string(kMaxManifestBytes) + "); re-export");
    std::ifstream in(path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!trust.empty()) key_id = check_signature(root, text, trust);
    if (nesting_depth(text) > kMaxNesting)
        throw bundle_error("cannot read " + path.string() + " (nested deeper than " + std::to_string(kMaxNesting) +
                           " levels); re-export the bundle");
    json value;
    try {
        value = json::parse(text);
    } catch (const json::exception &exc) {
        std::string reason = exc.what();
        const size_t at = reason.find("] ");  // "[json.exception.parse_error.101] parse error at line 2, ..."
        throw bundle_error("cannot read " + path.string() + " (" + (at == std::string::npos ? reason : reason.substr(at + 2)) +
                           "); re-export the bundle");
    }
    if (!value.is_object()) throw bundle_error(path.string() + " is not a JSON object; re-export the bundle");
    return value;
}

}  // namespace

std::string sha256_file(const fs::path &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw bundle_error("cannot read " + path.string());
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error(NPGMF_INTERNAL, "OpenSSL's SHA-256 failed");
    std::vector<char> chunk(1 << 20);
    while (in) {
        in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), chunk.data(), static_cast<size_t>(in.gcount()));
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx.get(), digest, &length);
    return to_hex(digest, length);
}

double budget_for(const std::string &precision, double measured) {
    const double margin = precision == "fp32" ? kMarginFp32 : precision == "fp16" ? kMarginFp16 : kMarginInt8;
    return measured + margin;
}

double mean_abs_error(const std::vector<double> &a, const std::vector<double> &b) {
    if (a.empty() || a.size() != b.size()) return NAN;
    double sum = 0;
    for (size_t k = 0; k < a.size(); ++k) {
        const double diff = std::abs(a[k] - b[k]);
        if (!std::isfinite(diff)) return NAN;
        sum += diff;
    }
    return sum / static_cast<double>(a.size());
}

int verdict_flips(const std::vector<double> &scores, double threshold, const std::vector<double> &reference,
                  double reference_threshold) {
    int flips = 0;
    for (size_t k = 0; k < scores.size() && k < reference.size(); ++k)
        flips += (scores[k] > threshold) != (reference[k] > reference_threshold);
    return flips;
}

std::vector<std::string> Manifest::precisions() const {
    std::vector<std::string> out;
    for (const char *p : kPrecisions)
        if (graphs.count(p)) out.emplace_back(p);
    return out;
}

std::string Manifest::sha256_of(const std::string &file) const { return raw["files"][file].get<std::string>(); }

Manifest read_manifest(const fs::path &given_root, const fs::path &trust) {
    fs::path root = given_root;
    if (root.has_filename() == false && root.has_parent_path()) root = root.parent_path();  // "bundle/" -> "bundle"
    const fs::path path = root / kManifestFile;
    std::error_code ec;
    if (!fs::is_directory(root, ec))
        throw bundle_error(root.string() + " is not a bundle directory; create one with `npgmf-edge export RUN`");
    if (!fs::is_regular_file(path, ec))
        throw bundle_error(std::string("no ") + kManifestFile + " in " + root.string() +
                           ": it is not a complete bundle; re-export it");
    std::string signed_by;
    json data = load_json(root, path, trust, signed_by);
    json content = data;
    content.erase(kSelfHashKey);
    std::string content_hash;
    try {
        content_hash = sha256_text(python_json_dumps(content));
    } catch (const std::invalid_argument &) {
        content_hash.clear();
    }
    if (!data.contains(kSelfHashKey) || !data[kSelfHashKey].is_string() || data[kSelfHashKey].get<std::string>() != content_hash)
        throw bundle_error(path.string() + " was changed after export (its content hash does not match); re-export it");
    Manifest m;
    m.root = root;
    m.signed_by = signed_by;
    const int exported_schema = data["schema_version"].is_number_integer() ? data["schema_version"].get<int>() : 0;
    try {
        data = migrate(std::move(data), path);
        check_named_files(root, data, path);
        verify_files(root, data["files"]);
        m.raw = data;
        m.schema_version = kSchemaVersion;
        m.knn = as_string(at(data, "knn"), "knn");
        const json &input = at(data, "input");
        m.max_batch = bounded_int(at(input, "max_batch"), "input.max_batch", kMaxBatch);
        m.image_size = bounded_int(at(input, "size"), "input.size", kMaxInputSize, 8);
        if (m.knn != "faiss" && m.knn != "graph")
            throw bundle_error(path.string() + ": unknown knn mode '" + m.knn + "'; expected one of faiss, graph");
        for (const auto &item : at(data, "graphs").items()) {
            GraphSpec spec;
            const json &entry = item.value();
            spec.precision = item.key();
            spec.file = as_string(at(entry, "file"), "graphs." + item.key() + ".file");
            spec.input_name = as_string(at(at(entry, "input"), "name"), "graphs." + item.key() + ".input.name");
            spec.input_shape = shape(at(at(entry, "input"), "shape"), "graphs." + item.key() + ".input.shape");
            const json &outputs = at(entry, "outputs");
            if (!outputs.is_object()) throw Malformed("graphs." + item.key() + ".outputs must be an object");
            for (const auto &output : outputs.items())
                spec.outputs[output.key()] = shape(output.value(), "graphs." + item.key() + ".outputs." + output.key());
            m.graphs[item.key()] = spec;
        }
        for (const auto &item : at(data, "calibration").items()) m.calibration[item.key()] = calibration(item.key(), item.value());
        if (data.contains("coreset") && !data["coreset"].is_null()) {
            const json &entry = data["coreset"];
            if (!entry.is_object()) throw Malformed("coreset must be an object, got " + entry.dump());
            Coreset c;
            if (entry.contains("search")) c.search = as_string(entry["search"], "coreset.search");
            if (c.search != "exact" && c.search != "int8")
                throw Malformed("coreset.search must be exact or int8, got " + entry["search"].dump());
            if (m.knn == "faiss") {
                c.count = bounded_int64(at(entry, "count"), "coreset.count", int64_t{1} << 31);
                c.dim = bounded_int(at(entry, "dim"), "coreset.dim", 1 << 16);
            }
            m.coreset = c;
        }
        check_consistency(m, path);
        check_selftest(m, path, exported_schema);
    } catch (const Malformed &exc) {
        throw bundle_error(path.string() + " is malformed (" + exc.what() + "); re-export the bundle");
    } catch (const json::exception &exc) {
        throw bundle_error(path.string() + " is malformed (" + exc.what() + "); re-export the bundle");
    }
    return m;
}

}  // namespace npgmf
