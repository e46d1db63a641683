// Signed bundles as runtime/signing.py checks them: an Ed25519 signature (signature.json) over the exact
// bytes of manifest.json, verified against the public keys a station trusts (one PEM file, or a folder of
// *.pub / *.pem files). The manifest holds the SHA-256 of every other file, so the signature covers the
// bundle. OpenSSL's EVP API does the cryptography; the messages are the Python runtime's sentences.
#pragma once

#include <filesystem>
#include <string>

namespace npgmf {

constexpr const char *kSignatureFile = "signature.json";

// The key id (SHA-256 of the raw public key, hex) of the trusted key whose signature `root`/signature.json
// holds for `manifest_bytes`; else Error(NPGMF_SIGNATURE_ERROR) saying which of: a trusted key unreadable,
// unsigned, signature.json malformed, signed by a key not trusted here, edited after signing.
std::string check_signature(const std::filesystem::path &root, const std::string &manifest_bytes,
                            const std::filesystem::path &trust);

}  // namespace npgmf
