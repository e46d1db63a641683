#include "signing.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "bundle.h"
#include "pyjson.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace npgmf {
namespace {

constexpr const char *kAlgorithm = "ed25519";
constexpr size_t kMaxKeyBytes = 16 * 1024;  // signing.MAX_KEY_BYTES: also how much of signature.json is read

using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

struct TrustedKey {
    fs::path path;
    std::string key_id;
    Key key{nullptr, EVP_PKEY_free};
};

Error signature_error(const std::string &message) {
    ERR_clear_error();  // OpenSSL's queue (per thread) holds nothing of ours after a refusal
    return Error(NPGMF_SIGNATURE_ERROR, message);
}

// The first `count` characters (code points, as Python slices str) of UTF-8 `text`.
std::string first_chars(const std::string &text, size_t count) {
    size_t at = 0, chars = 0;
    while (at < text.size()) {
        if ((static_cast<unsigned char>(text[at]) & 0xc0) != 0x80 && chars++ == count) break;
        ++at;
    }
    return text.substr(0, at);
}

// Python's str() of a JSON value as signing.py applies it to "signature" and "key_id".
std::string py_str(const json &value) {
    if (value.is_string()) return value.get<std::string>();
    if (value.is_null()) return "None";
    if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
    if (value.is_number_float()) return python_float_repr(value.get<double>());
    return value.dump();  // integers as Python writes them; lists and objects: never base64 ('[', '{')
}

// base64.b64decode(text, validate=True) as Python 3.11+ does it (binascii's strict mode), with its reasons.
std::string b64decode_strict(const std::string &text) {
    static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (const char c : text)
        if (static_cast<unsigned char>(c) >= 0x80) throw std::invalid_argument("string argument should contain only ASCII characters");
    std::string out;
    unsigned accumulated = 0;
    int quad = 0, pads = 0;
    size_t data_chars = 0;
    bool padding = false;
    for (size_t k = 0; k < text.size(); ++k) {
        const char c = text[k];
        if (c == '=') {
            padding = true;
            if (k == 0) throw std::invalid_argument("Leading padding not allowed");
            if (quad >= 2 && quad + ++pads >= 4) {
                if (k + 1 < text.size()) throw std::invalid_argument("Excess data after padding");
                return out;
            }
            continue;
        }
        const size_t value = alphabet.find(c);
        if (value == std::string::npos) throw std::invalid_argument("Only base64 data is allowed");
        if (padding) throw std::invalid_argument("Discontinuous padding not allowed");
        pads = 0;
        ++data_chars;
        accumulated = (accumulated << 6) | static_cast<unsigned>(value);
        if (quad == 0) {
            quad = 1;
        } else {
            const int keep = 2 * (3 - quad);  // bits left over after this character's whole bytes
            out += static_cast<char>((accumulated >> keep) & 0xff);
            accumulated &= (1u << keep) - 1;
            quad = (quad + 1) % 4;
        }
    }
    if (quad == 1)
        throw std::invalid_argument("Invalid base64-encoded string: number of data characters (" +
                                    std::to_string(data_chars) + ") cannot be 1 more than a multiple of 4");
    if (quad != 0) throw std::invalid_argument("Incorrect padding");
    return out;
}

std::string read_prefix(const fs::path &path, size_t limit) {
    std::ifstream in(path, std::ios::binary);
    std::string data(limit, '\0');
    in.read(data.data(), static_cast<std::streamsize>(limit));
    data.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
    return data;
}

std::string type_name(const EVP_PKEY *key) {
    switch (EVP_PKEY_get_base_id(key)) {
        case EVP_PKEY_RSA: return "RSAPublicKey";
        case EVP_PKEY_EC: return "ECPublicKey";
        case EVP_PKEY_DSA: return "DSAPublicKey";
        case EVP_PKEY_DH: return "DHPublicKey";
        case EVP_PKEY_ED448: return "Ed448PublicKey";
        case EVP_PKEY_X25519: return "X25519PublicKey";
        case EVP_PKEY_X448: return "X448PublicKey";
    }
    const char *name = EVP_PKEY_get0_type_name(key);
    return std::string(name ? name : "unknown") + " key";
}

// signing.load_public_key.
TrustedKey load_public_key(const fs::path &path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
        throw signature_error("trusted key " + path.string() + " does not exist or is not a file");
    const auto size = fs::file_size(path, ec);
    if (ec) throw signature_error("trusted key " + path.string() + " does not exist or is not a file");
    if (size > kMaxKeyBytes)
        throw signature_error("trusted key " + path.string() + " is " + std::to_string(size) + " bytes, not a PEM Ed25519 key");
    const std::string pem = read_prefix(path, kMaxKeyBytes);
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
    if (!bio) throw Error(NPGMF_INTERNAL, "out of memory");
    TrustedKey trusted;
    trusted.path = path;
    trusted.key.reset(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
    if (!trusted.key) {
        const unsigned long code = ERR_peek_error();
        const char *reason = code ? ERR_reason_error_string(code) : nullptr;
        throw signature_error("trusted key " + path.string() + " is not a PEM public key (" +
                              (pem.find("-----BEGIN PUBLIC KEY-----") == std::string::npos
                                   ? std::string("no -----BEGIN PUBLIC KEY----- block")
                                   : std::string("OpenSSL: ") + (reason ? reason : "cannot decode it")) + ")");
    }
    if (EVP_PKEY_get_base_id(trusted.key.get()) != EVP_PKEY_ED25519)
        throw signature_error("trusted key " + path.string() + " is a " + type_name(trusted.key.get()) +
                              ", not an Ed25519 public key");
    unsigned char raw[32];
    size_t length = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(trusted.key.get(), raw, &length) != 1 || length != sizeof raw)
        throw signature_error("trusted key " + path.string() + " is not a PEM public key (no raw Ed25519 key)");
    trusted.key_id = sha256_text(std::string(reinterpret_cast<const char *>(raw), length));
    return trusted;
}

// The filename's suffix as pathlib.PurePath.suffix gives it: "" for ".pub" alone or a trailing dot.
std::string suffix(const std::string &name) {
    const size_t dot = name.rfind('.');
    return dot != std::string::npos && dot > 0 && dot + 1 < name.size() ? name.substr(dot) : "";
}

// signing.load_trust: one key file, or every *.pub / *.pem file of a folder (at least one), sorted by name.
std::vector<TrustedKey> load_trust(const fs::path &trust) {
    std::error_code ec;
    std::vector<TrustedKey> keys;
    if (!fs::is_directory(trust, ec)) {
        keys.push_back(load_public_key(trust));
        return keys;
    }
    std::vector<fs::path> files;
    for (fs::directory_iterator it(trust, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string s = suffix(it->path().filename().string());
        std::error_code file_ec;
        if ((s == ".pub" || s == ".pem") && fs::is_regular_file(it->path(), file_ec)) files.push_back(it->path());
    }
    if (ec) throw signature_error("cannot read trust folder " + trust.string() + " (" + ec.message() + ")");
    if (files.empty()) throw signature_error("trust folder " + trust.string() + " holds no public key (.pub, .pem)");
    std::sort(files.begin(), files.end());
    for (const fs::path &file : files) keys.push_back(load_public_key(file));
    return keys;
}

struct Signature {
    std::string key_id, bytes;
};

// signing._read_signature.
Signature read_signature(const fs::path &root) {
    const fs::path path = root / kSignatureFile;
    std::error_code ec;
    if (fs::symlink_status(path, ec).type() != fs::file_type::regular)
        throw signature_error(root.string() + " is not signed (no " + kSignatureFile +
                              ") and this station accepts only signed bundles (--trust); sign it with "
                              "`npgmf-edge sign BUNDLE --key KEY`");
    const std::string data = read_prefix(path, kMaxKeyBytes);
    auto invalid = [&](const std::string &reason) {
        return signature_error(path.string() + " is not a valid signature (" + reason + "); sign the bundle again");
    };
    json entry;
    try {  // nlohmann's parser and destructor are iterative: 16 KiB of nesting costs no stack
        entry = json::parse(data);
    } catch (const json::exception &exc) {
        std::string reason = exc.what();
        const size_t at = reason.find("] ");  // "[json.exception.parse_error.101] parse error at ..."
        if (at != std::string::npos) reason = reason.substr(at + 2);
        const size_t echo = reason.find("; last read: ");  // the parser echoes up to 16 KiB of input
        if (echo != std::string::npos) reason = reason.substr(0, echo);
        throw invalid(reason);
    }
    if (!entry.is_object() || !entry.contains("algorithm") || entry["algorithm"] != kAlgorithm)
        throw invalid(std::string("algorithm must be ") + kAlgorithm);
    if (!entry.contains("signature")) throw invalid("'signature'");
    Signature signature;
    try {
        signature.bytes = b64decode_strict(py_str(entry["signature"]));
    } catch (const std::invalid_argument &exc) {
        throw invalid(exc.what());
    }
    signature.key_id = entry.contains("key_id") ? py_str(entry["key_id"]) : "";
    return signature;
}

bool verifies(const TrustedKey &trusted, const Signature &signature, const std::string &message) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, trusted.key.get()) != 1)
        throw Error(NPGMF_INTERNAL, "OpenSSL cannot verify an Ed25519 signature here");
    const int verdict = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char *>(signature.bytes.data()),
                                         signature.bytes.size(), reinterpret_cast<const unsigned char *>(message.data()),
                                         message.size());
    ERR_clear_error();
    return verdict == 1;
}

}  // namespace

std::string check_signature(const fs::path &root, const std::string &manifest_bytes, const fs::path &trust) {
    const std::vector<TrustedKey> keys = load_trust(trust);
    const Signature signature = read_signature(root);
    for (const TrustedKey &trusted : keys)
        if (verifies(trusted, signature, manifest_bytes)) return trusted.key_id;
    const std::string signer = signature.key_id;
    if (std::any_of(keys.begin(), keys.end(), [&](const TrustedKey &k) { return k.key_id == signer; }))
        throw signature_error(root.string() + " was changed after it was signed (the signature of key " +
                              first_chars(signer, 16) +
                              " does not match its manifest.json); do not use it: re-export and sign it again");
    std::string held;
    for (const TrustedKey &k : keys) held += (held.empty() ? "" : ", ") + k.key_id.substr(0, 16);
    throw signature_error(root.string() + " is signed by key " + (signer.empty() ? "?" : first_chars(signer, 16)) +
                          ", which this station does not trust (--trust " + trust.string() + " holds " + held +
                          "); sign it with a trusted key, or add its public key");
}

}  // namespace npgmf
