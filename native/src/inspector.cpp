#include "inspector.h"

#include <faiss/IndexFlat.h>
#include <faiss/index_io.h>
#include <faiss/impl/FaissException.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <omp.h>
#include <optional>
#include <onnxruntime_cxx_api.h>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>

#include "image.h"
#include "npz.h"

namespace fs = std::filesystem;

namespace npgmf {
namespace {

constexpr int64_t kFaissHeaderSlack = 4096;  // bytes an IndexFlatL2 file holds besides its vectors
const char *const kBackendPackages[] = {"onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12", "numpy", "tensorrt"};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

Ort::Env &ort_env() {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "npgmf");
    return env;
}

std::string join(const std::vector<std::string> &items, const char *separator = ", ") {
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) out += (k ? separator : "") + items[k];
    return out;
}

std::string format_g4(double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.4g", value);
    return buffer;
}

// platform_facts.describe of a machine entry of the manifest (its backends in the Python reader's order).
std::string describe_machine(const nlohmann::json &facts) {
    std::vector<std::string> features;
    if (facts.contains("cpu_features") && facts["cpu_features"].is_array())
        for (const auto &f : facts["cpu_features"])
            if (f.is_string()) features.push_back(f.get<std::string>());
    const std::string machine = facts.contains("machine") && facts["machine"].is_string() ? facts["machine"].get<std::string>() : "?";
    std::string text = features.empty() ? "no reported features" : join(features);
    const bool vnni = std::count(features.begin(), features.end(), "avx512_vnni") || std::count(features.begin(), features.end(), "avx_vnni");
    if ((machine == "x86_64" || machine == "AMD64") && !vnni) text += " (no VNNI)";
    std::vector<std::string> versions;
    if (facts.contains("backends") && facts["backends"].is_object()) {
        const auto &backends = facts["backends"];
        std::set<std::string> known(std::begin(kBackendPackages), std::end(kBackendPackages));
        for (const char *name : kBackendPackages)
            if (std::string(name) != "numpy" && backends.contains(name) && backends[name].is_string())
                versions.push_back(std::string(name) + " " + backends[name].get<std::string>());
        for (const auto &item : backends.items())
            if (!known.count(item.key()) && item.value().is_string())
                versions.push_back(item.key() + " " + item.value().get<std::string>());
    }
    return machine + " with " + text + "; " + (versions.empty() ? "no backend" : join(versions));
}

std::vector<std::string> this_cpu_features() {
    std::set<std::string> found;
    std::string flags;
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, colon);
        key.erase(key.find_last_not_of(" \t") + 1);
        if (key == "flags" || key == "Features") {
            flags = " " + line.substr(colon + 1) + " ";
            break;
        }
    }
    auto in_flags = [&flags](const char *name) { return flags.find(std::string(" ") + name + " ") != std::string::npos; };
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) found.insert("avx2");
    if (__builtin_cpu_supports("fma")) found.insert("fma");
    if (__builtin_cpu_supports("avx512f")) found.insert("avx512f");
    if (__builtin_cpu_supports("avx512bw")) found.insert("avx512bw");
    if (__builtin_cpu_supports("avx512vnni")) found.insert("avx512_vnni");
    if (__builtin_cpu_supports("avx512bf16")) found.insert("avx512_bf16");
    if (in_flags("f16c")) found.insert("f16c");
    // Features CPUID-only detection misses, from the kernel's list when it describes the same CPU.
    if (in_flags("avx512f") == static_cast<bool>(found.count("avx512f")))
        for (const char *name : {"avx_vnni", "amx_int8"})
            if (in_flags(name)) found.insert(name);
#else
    for (const char *name : {"asimd", "asimddp", "asimdhp", "sve", "i8mm", "sve2"})
        if (in_flags(name)) found.insert(name);
#endif
    return {found.begin(), found.end()};
}

}  // namespace

std::string onnxruntime_version() { return Ort::GetVersionString(); }

std::string faiss_version() {
    return std::to_string(FAISS_VERSION_MAJOR) + "." + std::to_string(FAISS_VERSION_MINOR) + "." + std::to_string(FAISS_VERSION_PATCH);
}

std::string describe_this_machine() {
    utsname name{};
    uname(&name);
    nlohmann::json facts = {{"machine", name.machine},
                            {"cpu_features", this_cpu_features()},
                            {"backends", {{"onnxruntime", onnxruntime_version()}, {"faiss", faiss_version()}}}};
    return describe_machine(facts) + " (libnpgmf)";
}

// One precision's graph: the ONNX Runtime session, and for knn "faiss" the coreset index.
class Engine {
  public:
    Engine(const Manifest &manifest, const std::string &precision, const OpenOptions &options)
        : spec_(manifest.graphs.at(precision)), size_(manifest.image_size), max_batch_(manifest.max_batch) {
        const fs::path model = manifest.root / spec_.file;
        try {
            Ort::SessionOptions so;
            so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
            so.SetLogSeverityLevel(3);  // errors only
            // No busy-waiting after a call: the FAISS search and the next decode need those cores.
            so.AddConfigEntry("session.intra_op.allow_spinning", "0");
            if (options.threads > 0) {
                so.SetIntraOpNumThreads(options.threads);
                so.SetInterOpNumThreads(1);
            }
            provider_ = add_providers(so, manifest, precision, options.device);
            session_ = std::make_unique<Ort::Session>(ort_env(), model.c_str(), so);
            check_io(model);
        } catch (const Ort::Exception &exc) {
            throw Error(NPGMF_BUNDLE_ERROR, manifest.root.string() + ": cannot open its " + precision + " graph (" +
                                                first_line(exc.what()) + ")");
        }
        if (manifest.knn == "faiss") load_coreset(manifest);
    }

    ~Engine() = default;

    std::string describe() const { return "onnxruntime " + onnxruntime_version() + " (" + provider_ + ")"; }

    // Graph (+ kNN + post for knn "faiss") over one batch.
    void run(const float *pixels, int batch, const Calibration &calibration, std::vector<float> &scores,
             std::vector<float> &fused, Stages *stages) const {
        if (batch < 1 || batch > max_batch_)
            throw Error(NPGMF_INVALID_ARGUMENT, "batch " + std::to_string(batch) + " outside 1.." + std::to_string(max_batch_));
        const size_t plane = static_cast<size_t>(size_) * size_;
        auto tick = Clock::now();
        std::vector<Ort::Value> outputs;
        try {
            const std::array<int64_t, 4> shape = {batch, 3, size_, size_};
            Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
            Ort::Value input = Ort::Value::CreateTensor<float>(memory, const_cast<float *>(pixels), plane * 3 * batch,
                                                               shape.data(), shape.size());
            const char *input_name = spec_.input_name.c_str();
            outputs = session_->Run(Ort::RunOptions{nullptr}, &input_name, &input, 1, output_ptrs_.data(), output_ptrs_.size());
        } catch (const Ort::Exception &exc) {
            throw Error(NPGMF_BACKEND_ERROR, "onnxruntime failed on " + spec_.file + " (" + first_line(exc.what()) + ")");
        }
        if (stages) stages->graph += since(tick);
        scores.assign(static_cast<size_t>(batch), 0.0f);
        fused.assign(plane * batch, 0.0f);
        if (!index_) {
            const float *map = tensor(outputs, "fused_map", plane * batch);
            const float *score = tensor(outputs, "image_score", static_cast<size_t>(batch));
            std::copy(map, map + plane * batch, fused.begin());
            std::copy(score, score + batch, scores.begin());
            return;
        }
        tick = Clock::now();
        const auto &feature_shape = spec_.outputs.at("patch_features");  // (D, h, w)
        const int64_t d = feature_shape.at(0), h = feature_shape.at(1), w = feature_shape.at(2);
        const float *features = tensor(outputs, "patch_features", static_cast<size_t>(batch * d * h * w));
        const float *logical = tensor(outputs, "logical_map", plane * batch);
        std::vector<cv::Mat> structural = structural_maps(features, batch, d, h, w);
        if (stages) stages->knn += since(tick);
        tick = Clock::now();
        for (int b = 0; b < batch; ++b) {
            cv::Mat logical_map(size_, size_, CV_32F, const_cast<float *>(logical + plane * b));
            cv::Mat out(size_, size_, CV_32F, fused.data() + plane * b);
            scores[static_cast<size_t>(b)] = post(structural[static_cast<size_t>(b)], logical_map, calibration, out);
        }
        if (stages) stages->post += since(tick);
    }

  private:
    static std::string first_line(const std::string &text) { return text.substr(0, text.find('\n')); }

    static std::string add_providers(Ort::SessionOptions &so, const Manifest &manifest, const std::string &precision,
                                     const std::string &device) {
        if (device == "cpu") return "CPUExecutionProvider";
        if (device != "cuda" && device != "tensorrt")
            throw Error(NPGMF_INVALID_ARGUMENT, "unknown device '" + device + "'; choose one of cpu, cuda, tensorrt");
        const std::string wanted = device == "cuda" ? "CUDAExecutionProvider" : "TensorrtExecutionProvider";
        const auto available = Ort::GetAvailableProviders();
        if (std::find(available.begin(), available.end(), wanted) == available.end())
            throw Error(NPGMF_UNSUPPORTED, "onnxruntime here has no " + wanted + " (available: " + join(available) +
                                               "); link libnpgmf against an onnxruntime built with it (JetPack's, or "
                                               "onnxruntime-gpu's), or use device cpu");
        const OrtApi &api = Ort::GetApi();
        if (device == "tensorrt") {
            // Engines cached beside the bundle, named by precision and the ONNX hash as the Python TensorRT
            // backend names its own; the EP appends the GPU's compute capability and checks TensorRT's version.
            const std::string prefix = "model." + precision + ".ort-trt." + manifest.sha256_of(manifest.graphs.at(precision).file).substr(0, 12);
            const std::string cache = manifest.root.string();
            OrtTensorRTProviderOptionsV2 *trt = nullptr;
            Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
            std::unique_ptr<OrtTensorRTProviderOptionsV2, decltype(api.ReleaseTensorRTProviderOptions)> owner(
                trt, api.ReleaseTensorRTProviderOptions);
            const char *keys[] = {"trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix",
                                  "trt_timing_cache_enable", "trt_timing_cache_path", "trt_fp16_enable"};
            const char *values[] = {"1", cache.c_str(), prefix.c_str(), "1", cache.c_str(), precision == "fp16" ? "1" : "0"};
            Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys, values, 6));
            so.AppendExecutionProvider_TensorRT_V2(*trt);
        }
        OrtCUDAProviderOptionsV2 *cuda = nullptr;
        Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
        std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> owner(cuda, api.ReleaseCUDAProviderOptions);
        so.AppendExecutionProvider_CUDA_V2(*cuda);
        return wanted;
    }

    void check_io(const fs::path &model) {
        Ort::AllocatorWithDefaultOptions allocator;
        std::vector<std::string> inputs, outputs;
        for (size_t k = 0; k < session_->GetInputCount(); ++k) inputs.emplace_back(session_->GetInputNameAllocated(k, allocator).get());
        for (size_t k = 0; k < session_->GetOutputCount(); ++k) {
            outputs.emplace_back(session_->GetOutputNameAllocated(k, allocator).get());
            if (session_->GetOutputTypeInfo(k).GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
                throw Error(NPGMF_BUNDLE_ERROR, model.string() + ": output " + outputs.back() + " is not float32; re-export");
        }
        std::set<std::string> declared;
        for (const auto &item : spec_.outputs) declared.insert(item.first);
        if (inputs != std::vector<std::string>{spec_.input_name} || std::set<std::string>(outputs.begin(), outputs.end()) != declared)
            throw Error(NPGMF_BUNDLE_ERROR, model.string() + " takes [" + join(inputs) + "] and gives [" + join(outputs) +
                                                "], the manifest says '" + spec_.input_name + "' and its outputs; re-export");
        const std::vector<std::string> needed = spec_.outputs.count("patch_features")
                                                    ? std::vector<std::string>{"logical_map", "patch_features"}
                                                    : std::vector<std::string>{"fused_map", "image_score"};
        for (const auto &name : needed)
            if (!declared.count(name)) throw Error(NPGMF_BUNDLE_ERROR, model.string() + " has no output " + name + "; re-export");
        output_names_ = outputs;
        for (const auto &name : output_names_) output_ptrs_.push_back(name.c_str());
    }

    const float *tensor(const std::vector<Ort::Value> &outputs, const std::string &name, size_t count) const {
        for (size_t k = 0; k < output_names_.size(); ++k) {
            if (output_names_[k] != name) continue;
            if (outputs[k].GetTensorTypeAndShapeInfo().GetElementCount() != count)
                throw Error(NPGMF_BACKEND_ERROR, spec_.file + ": output " + name + " has another size than the manifest says");
            return outputs[k].GetTensorData<float>();
        }
        throw Error(NPGMF_BACKEND_ERROR, spec_.file + " gave no " + name);
    }

    void load_coreset(const Manifest &manifest) {
        const fs::path path = manifest.root / kCoresetFaiss;
        const int64_t count = manifest.coreset->count, dim = manifest.coreset->dim, payload = count * dim * 4;
        std::error_code ec;
        const auto size = static_cast<int64_t>(fs::file_size(path, ec));
        if (ec || size < payload || size > payload + kFaissHeaderSlack)
            throw Error(NPGMF_BUNDLE_ERROR, path.string() + " is " + std::to_string(size) + " bytes, but " + std::to_string(count) +
                                                " vectors of dimension " + std::to_string(dim) + " take " + std::to_string(payload) +
                                                " (+ a header); re-export the bundle");
        faiss::Index *raw = nullptr;
        try {
            raw = faiss::read_index(path.c_str());
        } catch (const std::exception &exc) {
            throw Error(NPGMF_BUNDLE_ERROR, path.string() + " is not a readable FAISS index (" + first_line(exc.what()) +
                                                "); re-export the bundle");
        }
        index_.reset(raw);
        flat_ = dynamic_cast<const faiss::IndexFlat *>(index_.get());
        if (!flat_ || flat_->ntotal != count || flat_->d != dim)
            throw Error(NPGMF_BUNDLE_ERROR, path.string() + " holds another index than " + std::to_string(count) +
                                                " vectors of dimension " + std::to_string(dim) + " (exact L2); re-export the bundle");
    }

    // (B, D, h, w) patch features -> B (S, S) structural maps: k = 1 search, exact distances, bilinear resize.
    std::vector<cv::Mat> structural_maps(const float *features, int batch, int64_t d, int64_t h, int64_t w) const {
        const int64_t patches = h * w, n = batch * patches;
        std::vector<float> queries(static_cast<size_t>(n * d));
        for (int64_t b = 0; b < batch; ++b)
            for (int64_t c = 0; c < d; ++c)
                for (int64_t p = 0; p < patches; ++p)
                    queries[static_cast<size_t>((b * patches + p) * d + c)] = features[(b * d + c) * patches + p];
        std::vector<float> distances(static_cast<size_t>(n));
        std::vector<int64_t> labels(static_cast<size_t>(n));  // faiss::idx_t (Index::idx_t before 1.7.4)
        // One OpenMP thread per call (restored after): concurrency comes from the caller's threads, and
        // libgomp's spinning team cost 2-6x the search time here on a loaded 2-core machine.
        const int previous = omp_get_max_threads();
        omp_set_num_threads(1);
        try {
            index_->search(n, queries.data(), 1, distances.data(), labels.data());
            omp_set_num_threads(previous);
        } catch (const std::exception &exc) {
            omp_set_num_threads(previous);
            throw Error(NPGMF_BACKEND_ERROR, std::string("FAISS search failed (") + first_line(exc.what()) + ")");
        }
        const float *bank = flat_->get_xb();
        std::vector<cv::Mat> maps;
        for (int b = 0; b < batch; ++b) {
            cv::Mat grid(static_cast<int>(h), static_cast<int>(w), CV_32F);
            for (int64_t p = 0; p < patches; ++p) {
                const int64_t q = b * patches + p, label = labels[static_cast<size_t>(q)];
                if (label < 0 || label >= flat_->ntotal) throw Error(NPGMF_BACKEND_ERROR, "FAISS found no neighbour");
                // The exact distance ||q - b||, as knn.NearestNeighbourScorer.search recomputes it.
                double sum = 0;
                for (int64_t c = 0; c < d; ++c) {
                    const double diff = double(bank[label * d + c]) - double(queries[static_cast<size_t>(q * d + c)]);
                    sum += diff * diff;
                }
                grid.at<float>(static_cast<int>(p / w), static_cast<int>(p % w)) = static_cast<float>(std::sqrt(sum));
            }
            cv::Mat resized;
            cv::resize(grid, resized, cv::Size(size_, size_), 0, 0, cv::INTER_LINEAR);
            maps.push_back(resized);
        }
        return maps;
    }

    static void smooth(cv::Mat &map, double sigma) {
        if (sigma <= 0) return;
        const int ksize = 2 * static_cast<int>(4.0 * sigma + 0.5) + 1;
        cv::GaussianBlur(map, map, cv::Size(ksize, ksize), sigma, 0, cv::BORDER_REFLECT);
    }

    static cv::Mat standardized(const cv::Mat &map, const BranchStats &stats, double weight) {
        // A plain loop, not cv::Mat::forEach: the maps are small, and OpenCV's thread pool under many caller
        // threads only oversubscribes the cores (and hides its synchronisation from ThreadSanitizer).
        cv::Mat out(map.size(), CV_32F);
        const float mean = static_cast<float>(stats.mean), std = static_cast<float>(stats.std), w = static_cast<float>(weight);
        const cv::Mat in = map.isContinuous() ? map : map.clone();
        const float *src = in.ptr<float>();
        float *dst = out.ptr<float>();
        for (size_t k = 0; k < in.total(); ++k) dst[k] = w * ((src[k] - mean) / std);
        return out;
    }

    static float max_of(const cv::Mat &map) {
        double top = 0;
        cv::minMaxLoc(map, nullptr, &top);
        bool finite = cv::checkRange(map);
        return finite ? static_cast<float>(top) : std::numeric_limits<float>::quiet_NaN();
    }

    // postprocess.post_process: Eq. 11 + smoothing ("pixel"), or late fusion of branch image scores ("image").
    static float post(const cv::Mat &structural, const cv::Mat &logical, const Calibration &c, cv::Mat &out) {
        if (c.fusion_level == "pixel") {
            cv::Mat fused = standardized(structural, c.structural, c.weight_structural) + standardized(logical, c.logical, c.weight_logical);
            smooth(fused, c.gaussian_sigma);
            fused.copyTo(out);
            return max_of(out);
        }
        cv::Mat s = structural.clone(), l = logical.clone();
        smooth(s, c.gaussian_sigma);
        smooth(l, c.gaussian_sigma);
        cv::Mat fused = standardized(s, c.structural, c.weight_structural) + standardized(l, c.logical, c.weight_logical);
        fused.copyTo(out);
        const float ws = static_cast<float>(c.weight_structural), wl = static_cast<float>(c.weight_logical);
        const float s_score = (max_of(s) - static_cast<float>(c.structural_image->mean)) / static_cast<float>(c.structural_image->std);
        const float l_score = (max_of(l) - static_cast<float>(c.logical_image->mean)) / static_cast<float>(c.logical_image->std);
        return ws * s_score + wl * l_score;
    }

    GraphSpec spec_;
    int size_, max_batch_;
    std::string provider_;
    std::unique_ptr<Ort::Session> session_;
    std::vector<std::string> output_names_;
    std::vector<const char *> output_ptrs_;
    std::unique_ptr<faiss::Index> index_;
    const faiss::IndexFlat *flat_ = nullptr;
};

Inspector::Inspector(Manifest manifest, std::string precision, std::unique_ptr<Engine> engine)
    : manifest_(std::move(manifest)), precision_(precision), requested_(std::move(precision)), engine_(std::move(engine)) {}

Inspector::~Inspector() = default;

std::string Inspector::backend() const { return engine_->describe(); }

std::unique_ptr<Inspector> Inspector::open(const std::string &bundle, const OpenOptions &options) {
    Manifest manifest = read_manifest(bundle, options.trust);
    const auto precisions = manifest.precisions();
    const std::string precision = options.precision.empty() ? precisions.front() : options.precision;
    for (const std::string &name : {precision, options.fallback})
        if (!name.empty() && !manifest.graphs.count(name))
            throw Error(NPGMF_BUNDLE_ERROR, manifest.root.string() + " holds no " + name + " graph (it has: " + join(precisions) +
                                                "); re-export with --precision " + name);
    auto open_one = [&](const std::string &p) {
        return std::unique_ptr<Inspector>(new Inspector(manifest, p, std::make_unique<Engine>(manifest, p, options)));
    };
    auto inspector = open_one(precision);
    if (!options.self_test) return inspector;
    const std::string problem = inspector->run_self_test();
    if (problem.empty()) return inspector;
    if (options.fallback.empty() || options.fallback == precision) throw Error(NPGMF_SELFTEST_FAILED, problem);
    inspector.reset();
    auto answering = open_one(options.fallback);
    const std::string fallback_problem = answering->run_self_test();
    if (!fallback_problem.empty()) throw Error(NPGMF_SELFTEST_FAILED, fallback_problem);
    answering->requested_ = precision;
    answering->fallback_reason_ = problem;
    return answering;
}

void Inspector::run(const float *pixels, int batch, std::vector<float> &scores, std::vector<float> &fused,
                    Stages *stages) const {
    engine_->run(pixels, batch, calibration(), scores, fused, stages);
}

float Inspector::inspect(const cv::Mat &rgb, float *map, Stages *stages) const {
    const int size = manifest_.image_size;
    auto tick = Clock::now();
    std::vector<float> pixels(static_cast<size_t>(3) * size * size);
    to_model_input(rgb, size, pixels.data());
    if (stages) stages->preprocess += since(tick);
    std::vector<float> scores, fused;
    run(pixels.data(), 1, scores, fused, stages);
    tick = Clock::now();
    if (map) {
        cv::Mat out(rgb.rows, rgb.cols, CV_32F, map);
        cv::resize(cv::Mat(size, size, CV_32F, fused.data()), out, out.size(), 0, 0, cv::INTER_LINEAR);
    }
    if (stages) stages->post += since(tick);
    return scores.at(0);
}

std::string Inspector::run_self_test() {
    if (!manifest_.selftest || !manifest_.selftest->precisions.count(precision_)) return "";  // exported before it
    const Selftest &entry = *manifest_.selftest;
    const SelftestPrecision &expected = entry.precisions.at(precision_);
    const fs::path &root = manifest_.root;
    // The golden pixels and FP32 digests: .npy files (schema 3), or the legacy archive's "pixels" and
    // "digest_fp32" (none where the bundle had no fp32 graph).
    NpyArray golden;
    std::optional<NpyArray> reference_maps;
    if (!entry.legacy_file.empty()) {
        golden = read_npz_member(root / entry.legacy_file, "pixels");
        if (npz_has_member(root / entry.legacy_file, "digest_fp32"))
            reference_maps = read_npz_member(root / entry.legacy_file, "digest_fp32");
    } else {
        golden = read_npy_file(root / entry.pixels_file);
        reference_maps = read_npy_file(root / entry.reference_maps_file);
    }
    const int size = manifest_.image_size, grid = kDigestGrid;
    const auto images = static_cast<int64_t>(entry.images);
    if (golden.descr != "|u1" || golden.shape != std::vector<int64_t>{images, 3, size, size} ||
        (reference_maps && (reference_maps->descr != "<f4" || reference_maps->shape != std::vector<int64_t>{images, grid, grid})))
        throw Error(NPGMF_BUNDLE_ERROR, root.string() + ": the self-test files hold other arrays than " + std::to_string(images) +
                                            " uint8 images of [3, " + std::to_string(size) + ", " + std::to_string(size) +
                                            "] with their " + std::to_string(grid) + " x " + std::to_string(grid) + " digests; re-export");
    const size_t plane = static_cast<size_t>(3) * size * size;
    std::vector<double> scores, digests;
    for (int64_t start = 0; start < images; start += manifest_.max_batch) {
        const int batch = static_cast<int>(std::min<int64_t>(manifest_.max_batch, images - start));
        std::vector<float> pixels(plane * batch);
        for (size_t k = 0; k < pixels.size(); ++k) pixels[k] = golden.data[static_cast<size_t>(start) * plane + k];
        std::vector<float> batch_scores, fused;
        run(pixels.data(), batch, batch_scores, fused);
        for (int b = 0; b < batch; ++b) {
            scores.push_back(batch_scores[static_cast<size_t>(b)]);
            cv::Mat small;
            cv::resize(cv::Mat(size, size, CV_32F, fused.data() + static_cast<size_t>(b) * size * size), small,
                       cv::Size(grid, grid), 0, 0, cv::INTER_AREA);
            for (int y = 0; y < grid; ++y)
                for (int x = 0; x < grid; ++x) digests.push_back(small.at<float>(y, x));
        }
    }
    SelfTestResult result;
    result.ran = true;
    result.images = static_cast<int>(images);
    result.score_error = mean_abs_error(scores, entry.reference);
    result.budget = expected.budget;
    if (reference_maps && expected.map_budget) {
        const auto *values = reinterpret_cast<const float *>(reference_maps->data.data());
        result.map_error = mean_abs_error(digests, std::vector<double>(values, values + digests.size()));
        result.map_budget = *expected.map_budget;
    }
    if (entry.reference_threshold && expected.max_flips) {
        result.verdict_flips = verdict_flips(scores, calibration().threshold, entry.reference, *entry.reference_threshold);
        result.max_flips = *expected.max_flips;
    }
    self_test_ = result;
    if (self_test_.passed()) return "";
    const auto precisions = manifest_.precisions();
    std::string other;
    for (const auto &p : precisions)
        if (p != precision_) {
            other = p;
            break;
        }
    const std::string advice = other.empty() ? "re-export the bundle on a machine like this one"
                                             : "open it with --precision " + other + ", or pass --fallback " + other + " to answer in " +
                                                   other + " when " + precision_ + " fails here";
    const std::string maps = result.map_budget < 0 ? ""
                                                   : ", maps by " + format_g4(result.map_error) + " (budget " + format_g4(result.map_budget) + ")";
    const std::string flips = result.max_flips < 0 ? ""
                                                   : ", " + std::to_string(result.verdict_flips) + " of " + std::to_string(result.images) +
                                                         " verdicts differ from FP32's (at most " + std::to_string(result.max_flips) + ")";
    return root.string() + ": the " + precision_ + " graph fails its self-test on this machine: its scores are " +
           format_g4(result.score_error) + " from FP32's on average (budget " + format_g4(result.budget) + ")" + maps + flips +
           ", with " + backend() + " on " + describe_this_machine() + "; exported on " + describe_machine(entry.machine) + "; " + advice;
}

}  // namespace npgmf
