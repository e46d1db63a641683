/* libnpgmf: the npgmf-edge bundle runtime as a C library with a stable ABI.
 *
 * The same contract as the Python runtime (npgmf_edge.runtime.Inspector), read from the same bundle: the
 * manifest and its schema version, the SHA-256 of every file, the golden self-test at open, the same
 * decoding, pre-processing and post stage. Usable from C, C++ (npgmf.hpp), C# (P/Invoke) and Python
 * (ctypes).
 *
 * Shape (the anchors: ONNX Runtime's OrtApi, Triton's tritonserver.h):
 *   - one opaque handle, `npgmf_inspector`, closed by `npgmf_close` (NULL-safe);
 *   - every call returns an `npgmf_status`; NPGMF_OK (0) is success, anything else leaves the reason as one
 *     line in `npgmf_last_error()` (per thread, valid until that thread's next npgmf call);
 *   - every struct starts with `struct_size`: a caller sets it to sizeof(the struct it was compiled
 *     with), so the library can grow a struct at its end without breaking older callers; a size smaller
 *     than the first published version of the struct is refused with NPGMF_INVALID_ARGUMENT;
 *   - `npgmf_abi_version()` returns NPGMF_ABI_VERSION of the library; a caller compiled against another
 *     major ABI must not use it (see docs/EMBED.md, "What the ABI promises").
 *
 * One handle may be shared by threads: every inspect call on it gives what it gives sequentially.
 * No platform headers, no C++ in this header. */
#ifndef NPGMF_H
#define NPGMF_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(NPGMF_BUILDING)
#    define NPGMF_API __declspec(dllexport)
#  else
#    define NPGMF_API __declspec(dllimport)
#  endif
#else
#  define NPGMF_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Major ABI version: bumped only when a function or a struct's existing field changes. */
#define NPGMF_ABI_VERSION 1

typedef enum npgmf_status {
    NPGMF_OK = 0,
    NPGMF_INVALID_ARGUMENT = 1, /* a NULL pointer, a wrong struct_size, an impossible image shape */
    NPGMF_BUNDLE_ERROR = 2,     /* manifest, schema, hashes, paths, graph or coreset refused */
    NPGMF_SELFTEST_FAILED = 3,  /* the precision drifts from the export machine's answers here */
    NPGMF_IMAGE_ERROR = 4,      /* an image that cannot be decoded, is empty, truncated or too large */
    NPGMF_BACKEND_ERROR = 5,    /* ONNX Runtime or FAISS failed while running */
    NPGMF_UNSUPPORTED = 6,      /* a device or option this build or this machine does not have */
    NPGMF_BUFFER_TOO_SMALL = 7, /* the caller's map buffer holds fewer floats than the image has pixels */
    NPGMF_NON_FINITE = 8,       /* the score is not a finite number: no verdict (damaged model files) */
    NPGMF_INTERNAL = 9,         /* out of memory or a bug: the message says what */
    NPGMF_SIGNATURE_ERROR = 10  /* with `trust`: the bundle is unsigned, signed by a key not trusted, edited
                                   after signing, its signature.json malformed, or a trusted key unreadable */
} npgmf_status;

typedef enum npgmf_verdict {
    NPGMF_VERDICT_GOOD = 0,
    NPGMF_VERDICT_ANOMALOUS = 1, /* score > threshold */
    NPGMF_VERDICT_ERROR = 2      /* no verdict: the call's status says why */
} npgmf_verdict;

typedef struct npgmf_inspector npgmf_inspector;

/* Options of npgmf_open; fill with npgmf_open_options_init, then change what you need. */
typedef struct npgmf_open_options {
    size_t struct_size;     /* sizeof(npgmf_open_options) */
    const char *precision;  /* "fp32", "fp16", "int8"; NULL: the first of these the bundle has */
    const char *fallback;   /* a precision that answers when `precision` fails its self-test; NULL: none */
    int32_t threads;        /* ONNX Runtime intra-op threads; 0: its default */
    const char *device;     /* "cpu" (NULL too), "cuda" or "tensorrt" (ONNX Runtime execution providers) */
    int32_t self_test;      /* 1 (default): run the golden self-test at open; 0: skip it */
    int64_t max_pixels;     /* encoded images above this are decoded reduced (files) or refused (bytes);
                               0: the default, 16 000 000 as in the Python runtime */
    /* --- added in libnpgmf 0.2 (read only when struct_size covers it) --- */
    const char *trust;      /* a public key PEM file, or a folder of *.pub / *.pem files: the bundle must
                               carry a signature.json by one of them over its manifest.json's bytes
                               (docs/SECURITY.md), else NPGMF_SIGNATURE_ERROR; NULL: not checked */
} npgmf_open_options;

/* The answer for one image. The map is optional: set `map` to a buffer of `map_capacity` floats (at
 * least height x width of the image) to receive the fused anomaly map at the image's own size, row-major;
 * NULL: no map. */
typedef struct npgmf_result {
    size_t struct_size;    /* sizeof(npgmf_result) */
    double score;          /* the image score (NaN when there is none) */
    double threshold;      /* the calibrated verdict threshold */
    int32_t verdict;       /* npgmf_verdict */
    float *map;            /* in: the caller's buffer or NULL */
    size_t map_capacity;   /* in: floats `map` holds */
    int32_t map_height;    /* out: rows written (the image's height), 0 without a map */
    int32_t map_width;     /* out: columns written */
} npgmf_result;

/* What answers: the precision, its backend, and why it is not the one asked for (a self-test fallback). */
typedef struct npgmf_info {
    size_t struct_size;             /* sizeof(npgmf_info) */
    char precision[8];              /* the precision that answers */
    char requested_precision[8];    /* the one asked for at open */
    char knn[8];                    /* "graph" or "faiss" */
    char backend[128];              /* e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)" */
    char fallback_reason[2048];     /* empty unless a fallback answers */
    int32_t image_size;             /* the model's input side */
    int32_t self_test_ran;          /* 1 when the golden self-test ran at open and passed */
    double threshold;
    /* The self-test, judged against the FP32 reference as runtime/selftest.py judges it: */
    double self_test_score_error;   /* mean |score here - FP32 score| over the golden images */
    double self_test_budget;        /* the score error allowed */
    double self_test_map_error;     /* mean |map digest here - FP32 digest|; NaN: not checked */
    double self_test_map_budget;    /* NaN: not checked */
    int32_t self_test_verdict_flips; /* golden images whose verdict differs from FP32's; -1: not checked */
    int32_t self_test_max_flips;     /* -1: not checked */
    /* --- added in libnpgmf 0.3 (written only when struct_size covers them) --- */
    int32_t signature_verified;     /* 1: opened with `trust`, and signature.json verified by a trusted key
                                       over manifest.json's bytes; 0: not checked (no `trust`): nothing is
                                       known of who made the bundle */
    char signed_by[72];             /* the id of the trusted key that signed it: SHA-256 of its raw Ed25519
                                       public key, 64 hex digits, as `npgmf-edge keygen` and `sign` print
                                       it; "" when not checked */
} npgmf_info;

/* NPGMF_ABI_VERSION of the library actually loaded. */
NPGMF_API int32_t npgmf_abi_version(void);

/* The library's own version, e.g. "0.1.0 (onnxruntime 1.32.0, faiss 1.7.3)". */
NPGMF_API const char *npgmf_version_string(void);

/* One line: why the calling thread's last npgmf call did not return NPGMF_OK ("" after a success). */
NPGMF_API const char *npgmf_last_error(void);

/* A short constant name for a status ("NPGMF_BUNDLE_ERROR"). */
NPGMF_API const char *npgmf_status_name(npgmf_status status);

/* Fill the first `struct_size` bytes of *options with the defaults and set options->struct_size to it:
 * the library never writes past the struct the caller compiled with. */
NPGMF_API npgmf_status npgmf_open_options_init_sized(npgmf_open_options *options, size_t struct_size);
/* The function of the first ABI: fills the options as version 1 of the struct had them (up to
 * max_pixels), for callers compiled before npgmf_open_options grew. Callers compiled with this header reach
 * npgmf_open_options_init_sized through the macro below, which passes sizeof their struct. */
NPGMF_API npgmf_status npgmf_open_options_init(npgmf_open_options *options);
#define npgmf_open_options_init(options) npgmf_open_options_init_sized((options), sizeof *(options))
NPGMF_API npgmf_status npgmf_result_init(npgmf_result *result);

/* Read and check `bundle_dir`, open a precision, run its self-test. `options` may be NULL (defaults).
 * On failure *out is NULL. */
NPGMF_API npgmf_status npgmf_open(const char *bundle_dir, const npgmf_open_options *options,
                                  npgmf_inspector **out);

/* Inspect an RGB uint8 image of height x width pixels, 3 channels, `row_stride` bytes from one row to the
 * next (>= 3 x width). */
NPGMF_API npgmf_status npgmf_inspect_rgb(npgmf_inspector *inspector, const uint8_t *pixels, int32_t height,
                                         int32_t width, size_t row_stride, npgmf_result *result);

/* Inspect an encoded image (PNG, JPEG, BMP, ...) in memory; above max_pixels it is refused. */
NPGMF_API npgmf_status npgmf_inspect_encoded(npgmf_inspector *inspector, const void *data, size_t size,
                                             npgmf_result *result);

/* Inspect an image file; above max_pixels it is decoded reduced where the format allows (as Python's
 * read_image). */
NPGMF_API npgmf_status npgmf_inspect_file(npgmf_inspector *inspector, const char *path,
                                          npgmf_result *result);

NPGMF_API npgmf_status npgmf_describe(const npgmf_inspector *inspector, npgmf_info *info);

/* Release the handle (NULL is ignored). No call may be running on it. */
NPGMF_API void npgmf_close(npgmf_inspector *inspector);

#ifdef __cplusplus
}
#endif

#endif /* NPGMF_H */
