"""Signed bundles: an Ed25519 signature over `manifest.json`, checked against the keys a station trusts.

The manifest holds the SHA-256 of every other file, so a signature over its exact bytes covers the whole
bundle. The hashes alone catch damage; a signature by a key an editor does not hold catches tampering.

    export --sign-key KEY / sign BUNDLE --key KEY -> BUNDLE/signature.json (written atomically)
    read_manifest(BUNDLE, trust=KEY_OR_FOLDER)     -> refuses, in one line (SignatureError), a bundle that
                                                      is unsigned, signed by an untrusted key, or edited
                                                      after signing; without `trust`, nothing is checked

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public), from `npgmf-edge keygen` or `openssl
genpkey -algorithm ed25519`. docs/SECURITY.md says why `cryptography` and not OpenSSF `model-signing`.

Example:
    >>> private, public = generate_key_pair(Path("keys"))
    >>> sign_bundle(Path("bundle"), private)          # in runtime.manifest: it reads the bundle first
    >>> read_manifest(Path("bundle"), trust=public)  # SignatureError if anything changed since
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npgmf_edge.errors import BundleError, NpgmfError
from npgmf_edge.fileio import atomic_write_bytes

SIGNATURE_FILE = "signature.json"
MANIFEST_FILE = "manifest.json"  # the bundle's manifest: the one file signed (`runtime.manifest` reads it)
ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "npgmf-signing.key"
PUBLIC_KEY_FILE = "npgmf-signing.pub"
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")
MAX_KEY_BYTES = 16 * 1024  # a PEM Ed25519 key is about 120 bytes; refuse to read anything large


class SignatureError(BundleError):
    """A station that trusts keys got a bundle that is unsigned, signed by another key, or edited since."""


class SigningKeyError(NpgmfError):
    """A key file is missing, unreadable or not an Ed25519 key."""


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key_id: str  # SHA-256 of the raw 32-byte public key, hex: printed by keygen, sign and verify
    key: Any  # cryptography's Ed25519PublicKey


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # a dependency of the base install; only a broken environment lacks it
        raise SigningKeyError(
            f"signed bundles need the `cryptography` package ({exc}): pip install cryptography"
        ) from exc
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _read_key_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise SigningKeyError(f"{what} {path} does not exist or is not a file")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise SigningKeyError(f"{what} {path} is {path.stat().st_size} bytes, not a PEM Ed25519 key")
    return path.read_bytes()


def load_private_key(path: Path) -> Any:
    """The Ed25519 private key in PEM file `path` (unencrypted PKCS#8), or SigningKeyError naming the file."""
    serialization, ed25519 = _crypto()
    data = _read_key_bytes(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"signing key {path} is not an unencrypted PEM private key ({exc}); make one with "
            "`npgmf-edge keygen --out DIR`"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> TrustedKey:
    serialization, ed25519 = _crypto()
    data = _read_key_bytes(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"trusted key {path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"trusted key {path} is a {type(key).__name__}, not an Ed25519 public key")
    return TrustedKey(Path(path), key_id(key), key)


def load_trust(trust: Path) -> list[TrustedKey]:
    """The public keys of `trust`: one key file, or every *.pub / *.pem file of a folder (at least one)."""
    trust = Path(trust)
    if trust.is_dir():
        files = sorted(p for p in trust.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file())
        if not files:
            raise SigningKeyError(
                f"trust folder {trust} holds no public key ({', '.join(PUBLIC_KEY_SUFFIXES)})"
            )
        return [load_public_key(p) for p in files]
    return [load_public_key(trust)]


def generate_key_pair(out: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in folder `out`: the private key readable by its owner only (0600), the public
    key to copy to stations. Refuses to replace an existing key."""
    serialization, ed25519 = _crypto()
    out = Path(out)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} exists; keygen never replaces a key (choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    atomic_write_bytes(public_path, public_pem)
    return private_path, public_path


def sign_manifest_bytes(root: Path, manifest_bytes: bytes, private_key: Any) -> dict[str, str]:
    """Write `root`/signature.json (atomically) for these exact manifest bytes; returns its content."""
    entry = {
        "algorithm": ALGORITHM,
        "signed_file": MANIFEST_FILE,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    atomic_write_bytes(Path(root) / SIGNATURE_FILE, (json.dumps(entry, indent=2) + "\n").encode())
    return entry


def _read_signature(root: Path) -> dict[str, str]:
    path = Path(root) / SIGNATURE_FILE
    if not path.is_file() or path.is_symlink():
        raise SignatureError(
            f"{root} is not signed (no {SIGNATURE_FILE}) and this station accepts only signed bundles "
            "(--trust); sign it with `npgmf-edge sign BUNDLE --key KEY`"
        )
    try:
        entry = json.loads(path.read_bytes()[:MAX_KEY_BYTES])
        if not isinstance(entry, dict) or entry.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM}")
        signature = base64.b64decode(str(entry["signature"]), validate=True)
        return {"key_id": str(entry.get("key_id", "")), "signature": signature}
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SignatureError(f"{path} is not a valid signature ({exc}); sign the bundle again") from exc


def check_signature(root: Path, manifest_bytes: bytes, trust: Path) -> TrustedKey:
    """The trusted key whose signature `root`/signature.json holds for `manifest_bytes`, else SignatureError
    saying which of: unsigned, signed by a key not trusted here, edited after signing."""
    keys = load_trust(trust)  # fails first when cryptography is missing
    from cryptography.exceptions import InvalidSignature

    entry = _read_signature(root)
    for trusted in keys:
        try:
            trusted.key.verify(entry["signature"], manifest_bytes)
            return trusted
        except InvalidSignature:
            continue
    signer = entry["key_id"]
    if any(k.key_id == signer for k in keys):
        raise SignatureError(
            f"{root} was changed after it was signed (the signature of key {signer[:16]} does not match "
            "its manifest.json); do not use it: re-export and sign it again"
        )
    raise SignatureError(
        f"{root} is signed by key {signer[:16] or '?'}, which this station does not trust (--trust {trust} "
        f"holds {', '.join(k.key_id[:16] for k in keys)}); sign it with a trusted key, or add its public key"
    )
