#include "npz.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <optional>

#include "bundle.h"

namespace npgmf {
namespace {

constexpr size_t kMaxNpzBytes = size_t{1} << 31;

uint16_t u16(const unsigned char *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const unsigned char *p) {
    return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
uint64_t u64(const unsigned char *p) { return uint64_t{u32(p)} | (uint64_t{u32(p + 4)} << 32); }

// The value after `key` in a .npy header dict: "'descr': '<f4', 'fortran_order': False, 'shape': (4, 8), }".
std::string dict_value(const std::string &header, const std::string &key) {
    const size_t at = header.find("'" + key + "':");
    if (at == std::string::npos) return "";
    size_t start = at + key.size() + 3;
    while (start < header.size() && header[start] == ' ') ++start;
    if (start >= header.size()) return "";
    if (header[start] == '\'') {
        const size_t end = header.find('\'', start + 1);
        return end == std::string::npos ? "" : header.substr(start + 1, end - start - 1);
    }
    if (header[start] == '(') {
        const size_t end = header.find(')', start);
        return end == std::string::npos ? "" : header.substr(start + 1, end - start - 1);
    }
    const size_t end = header.find_first_of(",}", start);
    return header.substr(start, end - start);
}

size_t itemsize(const std::string &descr) {
    if (descr == "|u1" || descr == "|i1" || descr == "|b1") return 1;
    if (descr == "<f4" || descr == "<i4") return 4;
    if (descr == "<f8" || descr == "<i8") return 8;
    return 0;
}

}  // namespace

NpyArray parse_npy(const unsigned char *npy, uint64_t size, const std::string &where, const std::string &member) {
    auto fail = [&](const std::string &why) { return Error(NPGMF_BUNDLE_ERROR, where + why + "); re-export"); };
    if (size < 10 || std::memcmp(npy, "\x93NUMPY", 6) != 0) throw fail(member + " is not a .npy array");
    const int major = npy[6];
    const size_t prefix = major == 1 ? 10 : 12;
    if (size < prefix) throw fail(member + " is truncated");
    const size_t header_length = major == 1 ? u16(npy + 8) : u32(npy + 8);
    if (prefix + header_length > size) throw fail(member + " is truncated");
    const std::string header(reinterpret_cast<const char *>(npy + prefix), header_length);
    NpyArray array;
    array.descr = dict_value(header, "descr");
    if (dict_value(header, "fortran_order") != "False") throw fail(member + " is in Fortran order");
    const std::string dims = dict_value(header, "shape");
    size_t p = 0;
    while (p < dims.size()) {
        while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
        if (p >= dims.size()) break;
        if (!std::isdigit(static_cast<unsigned char>(dims[p]))) throw fail(member + " has an impossible shape");
        int64_t value = 0;
        while (p < dims.size() && std::isdigit(static_cast<unsigned char>(dims[p])) && value <= (int64_t{1} << 31))
            value = value * 10 + (dims[p++] - '0');
        if (value > (int64_t{1} << 31)) throw fail(member + " has an impossible shape");
        array.shape.push_back(value);
    }
    const size_t item = itemsize(array.descr);
    if (item == 0) throw fail(member + " has dtype " + array.descr);
    const uint64_t bytes = static_cast<uint64_t>(array.count()) * item;
    if (prefix + header_length + bytes != size) throw fail(member + " holds another size than its shape");
    array.data.assign(npy + prefix + header_length, npy + size);
    return array;
}

int64_t NpyArray::count() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

namespace {

std::optional<NpyArray> npz_member(const std::filesystem::path &path, const std::string &name) {
    const std::string where = path.string() + ": cannot read the self-test images (";
    auto fail = [&](const std::string &why) { return Error(NPGMF_BUNDLE_ERROR, where + why + "); re-export"); };
    std::ifstream in(path, std::ios::binary);
    if (!in) throw fail("cannot open it");
    std::vector<unsigned char> zip((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (zip.size() < 22 || zip.size() > kMaxNpzBytes) throw fail("not a zip file");
    // End of central directory: the last "PK\5\6" within the final 64 KiB + 22 bytes.
    size_t eocd = std::string::npos;
    for (size_t at = zip.size() - 22 + 1; at-- > 0 && zip.size() - at <= 65557;)
        if (std::memcmp(&zip[at], "PK\x05\x06", 4) == 0) {
            eocd = at;
            break;
        }
    if (eocd == std::string::npos) throw fail("no zip directory");
    const size_t entries = u16(&zip[eocd + 10]);
    size_t at = u32(&zip[eocd + 16]);
    const std::string member = name + ".npy";
    for (size_t k = 0; k < entries; ++k) {
        if (at + 46 > zip.size() || std::memcmp(&zip[at], "PK\x01\x02", 4) != 0) throw fail("a damaged zip directory");
        const uint16_t method = u16(&zip[at + 10]);
        uint64_t compressed = u32(&zip[at + 20]), size = u32(&zip[at + 24]);
        const size_t name_length = u16(&zip[at + 28]), extra_length = u16(&zip[at + 30]), comment_length = u16(&zip[at + 32]);
        uint64_t offset = u32(&zip[at + 42]);
        if (at + 46 + name_length + extra_length > zip.size()) throw fail("a damaged zip directory");
        const std::string entry_name(reinterpret_cast<const char *>(&zip[at + 46]), name_length);
        // ZIP64 extra field (id 1): the 0xFFFFFFFF fields, in order size, compressed, offset.
        for (size_t e = at + 46 + name_length; e + 4 <= at + 46 + name_length + extra_length;) {
            const uint16_t id = u16(&zip[e]), length = u16(&zip[e + 2]);
            size_t field = e + 4;
            if (id == 1) {
                auto take = [&](uint64_t &value) {
                    if (value == 0xffffffffu && field + 8 <= e + 4 + length && field + 8 <= zip.size()) {
                        value = u64(&zip[field]);
                        field += 8;
                    }
                };
                take(size);
                take(compressed);
                take(offset);
            }
            e += 4 + length;
        }
        at += 46 + name_length + extra_length + comment_length;
        if (entry_name != member) continue;
        if (method != 0 || compressed != size) throw fail(member + " is compressed; a stored member is expected");
        if (offset + 30 > zip.size() || std::memcmp(&zip[offset], "PK\x03\x04", 4) != 0) throw fail("a damaged member " + member);
        const uint64_t data_at = offset + 30 + u16(&zip[offset + 26]) + u16(&zip[offset + 28]);
        if (data_at + size > zip.size()) throw fail(member + " is truncated");
        return parse_npy(&zip[data_at], size, where, member);
    }
    return std::nullopt;
}

}  // namespace

NpyArray read_npz_member(const std::filesystem::path &path, const std::string &name) {
    std::optional<NpyArray> found = npz_member(path, name);
    if (!found)
        throw Error(NPGMF_BUNDLE_ERROR, path.string() + ": cannot read the self-test images (no " + name + ".npy in it); re-export");
    return std::move(*found);
}

bool npz_has_member(const std::filesystem::path &path, const std::string &name) { return npz_member(path, name).has_value(); }

NpyArray read_npy_file(const std::filesystem::path &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(NPGMF_BUNDLE_ERROR, path.string() + ": cannot read the self-test images (cannot open it); re-export");
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() > kMaxNpzBytes) throw Error(NPGMF_BUNDLE_ERROR, path.string() + " is too large for a self-test file; re-export");
    return parse_npy(bytes.data(), bytes.size(), path.string() + ": cannot read the self-test images (", path.filename().string());
}

}  // namespace npgmf
