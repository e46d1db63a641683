// A reader for what numpy.savez writes: a zip of stored (uncompressed) .npy members. Enough for the bundle's
// self-test file; anything else (compression, another dtype, Fortran order, a size that does not add up)
// is refused with the member named. The file's SHA-256 is checked at open before this reads it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace npgmf {

struct NpyArray {
    std::string descr;             // "|u1", "<f4"
    std::vector<int64_t> shape;
    std::vector<unsigned char> data;  // C order

    int64_t count() const;
};

// One .npy array held in `size` bytes; errors say "<where><member> ...); re-export".
NpyArray parse_npy(const unsigned char *npy, uint64_t size, const std::string &where, const std::string &member);

// Member `name` (without ".npy") of the .npz at `path`; throws npgmf::Error (NPGMF_BUNDLE_ERROR).
NpyArray read_npz_member(const std::filesystem::path &path, const std::string &name);

// A standalone .npy file (schema 3's self-test files).
NpyArray read_npy_file(const std::filesystem::path &path);

// Whether the .npz at `path` holds member `name` (without ".npy").
bool npz_has_member(const std::filesystem::path &path, const std::string &name);

}  // namespace npgmf
