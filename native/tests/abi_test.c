/* The C ABI from C: the version call, NULL pointers and wrong struct sizes are clean statuses with a
 * message, never a crash; NULL-safe close. Needs no bundle (ctest runs it in every build). */
#include <stdio.h>
#include <string.h>

#include "npgmf/npgmf.h"

static int failures = 0;

/* npgmf_open_options as the first ABI published it: what a caller compiled before `trust` was added has. */
typedef struct options_v1 {
    size_t struct_size;
    const char *precision, *fallback;
    int32_t threads;
    const char *device;
    int32_t self_test;
    int64_t max_pixels;
} options_v1;

static void expect(int condition, const char *what) {
    if (!condition) {
        fprintf(stderr, "FAILED: %s (last error: %s)\n", what, npgmf_last_error());
        ++failures;
    }
}

int main(void) {
    npgmf_inspector *inspector = (npgmf_inspector *)1;
    npgmf_open_options options;
    npgmf_result result;
    npgmf_info info;
    unsigned char pixel[3] = {0, 0, 0};

    expect(npgmf_abi_version() == NPGMF_ABI_VERSION, "the library's ABI version is the header's");
    expect(strlen(npgmf_version_string()) > 0, "a version string");
    expect(npgmf_open(NULL, NULL, &inspector) == NPGMF_INVALID_ARGUMENT && inspector == NULL, "NULL bundle");
    expect(strstr(npgmf_last_error(), "bundle_dir is NULL") != NULL, "the message names the argument");
    expect(npgmf_open("/nonexistent", NULL, NULL) == NPGMF_INVALID_ARGUMENT, "NULL out");
    expect(npgmf_open("/nonexistent", NULL, &inspector) == NPGMF_BUNDLE_ERROR, "a missing bundle");
    expect(strchr(npgmf_last_error(), '\n') == NULL && strstr(npgmf_last_error(), "/nonexistent") != NULL,
           "one line naming the folder");
    npgmf_open_options_init(&options);
    options.struct_size = 4;
    expect(npgmf_open("/nonexistent", &options, &inspector) == NPGMF_INVALID_ARGUMENT, "options.struct_size too small");
    {   /* an old caller: the first ABI's init never writes past version 1's struct; its open still works */
        struct { options_v1 options; unsigned char guard[32]; } old;
        memset(&old, 0xAB, sizeof old);
        expect((npgmf_open_options_init)((npgmf_open_options *)&old.options) == NPGMF_OK, "the first ABI's init");
        expect(old.options.struct_size == sizeof(options_v1) && old.options.self_test == 1 && old.options.device == NULL,
               "it fills version 1 of the struct");
        for (size_t k = 0; k < sizeof old.guard; ++k)
            expect(old.guard[k] == 0xAB, "nothing written past an old caller's struct");
        expect(npgmf_open("/nonexistent", (const npgmf_open_options *)&old.options, &inspector) == NPGMF_BUNDLE_ERROR,
               "an old caller's options are read as far as they go");
    }
    memset(&options, 0xAB, sizeof options);
    expect(npgmf_open_options_init(&options) == NPGMF_OK && options.struct_size == sizeof options &&
               options.trust == NULL && options.self_test == 1, "this header's init fills the whole struct");
    expect(npgmf_open_options_init_sized(&options, 8) == NPGMF_INVALID_ARGUMENT, "a size below version 1's");
    expect(strcmp(npgmf_status_name(NPGMF_SIGNATURE_ERROR), "NPGMF_SIGNATURE_ERROR") == 0, "the signature status");
    npgmf_result_init(&result);
    expect(npgmf_inspect_rgb(NULL, pixel, 1, 1, 3, &result) == NPGMF_INVALID_ARGUMENT, "NULL inspector");
    expect(npgmf_inspect_rgb(NULL, pixel, 1, 1, 3, NULL) == NPGMF_INVALID_ARGUMENT, "NULL result");
    result.struct_size = 8;
    expect(npgmf_inspect_rgb(NULL, pixel, 1, 1, 3, &result) == NPGMF_INVALID_ARGUMENT, "result.struct_size too small");
    expect(npgmf_inspect_encoded(NULL, pixel, 3, NULL) == NPGMF_INVALID_ARGUMENT, "encoded: NULL result");
    expect(npgmf_inspect_file(NULL, "x.png", NULL) == NPGMF_INVALID_ARGUMENT, "file: NULL result");
    memset(&info, 0, sizeof info);
    expect(npgmf_describe(NULL, &info) == NPGMF_INVALID_ARGUMENT, "describe: struct_size 0");
    info.struct_size = sizeof info;
    expect(npgmf_describe(NULL, &info) == NPGMF_INVALID_ARGUMENT, "describe: NULL inspector");
    expect(strcmp(npgmf_status_name(NPGMF_SELFTEST_FAILED), "NPGMF_SELFTEST_FAILED") == 0, "status names");
    npgmf_close(NULL);
    printf("abi_test: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
