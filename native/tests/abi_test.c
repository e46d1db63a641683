/* The C ABI from C: the version call, NULL pointers and wrong struct sizes are clean statuses with a
 * message, never a crash; NULL-safe close. Needs no bundle (ctest runs it in every build). */
#include <stdio.h>
#include <string.h>

#include "npgmf/npgmf.h"

static int failures = 0;

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
