"""Signed bundles in libnpgmf (`trust` in npgmf_open_options, `npgmf-inspect --trust`), against the Python
runtime's `read_manifest(..., trust=...)` on the same bundles (runtime/signing.py, docs/SECURITY.md).

Every case (signed and trusted by file or folder; unsigned; another key; the manifest edited after signing;
signature.json malformed in each way signing.py reads it; keys that are not PEM Ed25519 public keys) gets
the same accept/refuse answer from both runtimes, with the same sentence; the cases run again against the
ASan + UBSan build, where each must be a status, never a crash.
"""

from __future__ import annotations

import base64
import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed448, rsa
from native_build import run_under_asan
from npgmf_ctypes import STATUS_NAMES, Info, NativeError

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import read_manifest
from npgmf_edge.runtime.manifest import MANIFEST_FILE, SELF_HASH_KEY, _content_sha256, graph_file, sign_bundle
from npgmf_edge.runtime.signing import (
    SIGNATURE_FILE,
    SignatureError,
    SigningKeyError,
    check_signature,
    generate_key_pair,
)

# Python's exception class -> the native status for the same refusal.
NATIVE_STATUS = {SignatureError: "NPGMF_SIGNATURE_ERROR", SigningKeyError: "NPGMF_SIGNATURE_ERROR",
                 BundleError: "NPGMF_BUNDLE_ERROR", type(None): "NPGMF_OK"}  # fmt: skip
# Cases whose reason in parentheses is the parser's own wording (Python's json or cryptography, nlohmann or
# OpenSSL): the sentence around it is compared.
OWN_WORDING = {"signature not JSON", "signature empty", "signature truncated at 16 KiB",
               "signature nested deep", "key garbage", "key is a private key", "key empty",
               "key folder with a broken key"}  # fmt: skip


def _edit_manifest(bundle: Path, change) -> None:
    """What anyone who can write the bundle can do: change the manifest and recompute its own hash."""
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    change(data)
    data[SELF_HASH_KEY] = _content_sha256(data)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data, indent=2))


def _pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signature_cases(bundle: Path) -> dict[str, object]:
    """signature.json contents that signing._read_signature refuses or reads oddly, keyed by case name."""
    entry = json.loads((bundle / SIGNATURE_FILE).read_text())
    ten_bytes = base64.b64encode(b"0123456789").decode()

    def changed(**fields) -> str:
        return json.dumps({**entry, **fields})

    without = {k: v for k, v in entry.items() if k != "signature"}
    no_key_id = {k: v for k, v in entry.items() if k != "key_id"}
    return {
        "signature not JSON": "{not json",
        "signature empty": "",
        "signature a list": json.dumps([entry]),
        "signature algorithm rsa": changed(algorithm="rsa"),
        "signature without algorithm": json.dumps({k: v for k, v in entry.items() if k != "algorithm"}),
        "signature missing": json.dumps(without),
        "signature not base64": changed(signature="!!not base64!!"),
        "signature bad padding": changed(signature=entry["signature"][:-2]),
        "signature leading padding": changed(signature="=" + entry["signature"]),
        "signature one char over": changed(signature=entry["signature"].rstrip("=") + "AAAAA"),
        "signature excess after padding": changed(signature=entry["signature"] + "AA"),
        "signature non-ascii": changed(signature="é" + entry["signature"]),
        "signature null": changed(signature=None),  # str(None) is "None": base64 for 3 bytes
        "signature a number": changed(signature=12345678),
        "signature a float": changed(signature=1.5),
        "signature too short": changed(signature=ten_bytes),
        "signature of zero bytes": changed(signature=""),
        "signature nested": '{"x": ' + "[" * 500 + "]" * 500 + "}",
        "signature nested deep": "[" * 5000 + "]" * 5000,  # Python's json: RecursionError
        "signature truncated at 16 KiB": changed(padding="x" * 20000),
        "signature without key id": json.dumps(no_key_id),
        "signature key id a number": changed(key_id=7),
        "signature key id unicode": changed(key_id="é" * 20),
        "signature of another manifest": changed(signature=base64.b64encode(bytes(64)).decode()),
    }


def signing_cases(graph_bundle: Path, root: Path) -> list[tuple[str, Path, Path]]:
    """(name, bundle, trust) for every case; the bundles are copies of `graph_bundle` under `root`."""
    keys = {name: generate_key_pair(root / "keys" / name) for name in ("ours", "other")}
    ours_private, ours = keys["ours"]
    signed = root / "signed"
    shutil.copytree(graph_bundle, signed)
    sign_bundle(signed, ours_private)

    def copy(name: str, source: Path = signed) -> Path:
        target = root / name.replace(" ", "-")
        shutil.copytree(source, target)
        return target

    folder = root / "trusted"
    folder.mkdir()
    shutil.copy(keys["other"][1], folder / "a-other.pub")
    shutil.copy(ours, folder / "b-ours.pem")
    (folder / "notes.txt").write_text("not a key")
    cases = [("signed, key file", signed, ours), ("signed, key folder", signed, ours.parent),
             ("signed, folder of two keys", signed, folder)]  # fmt: skip
    cases.append(("unsigned", copy("unsigned", graph_bundle), ours))
    other = copy("other key", graph_bundle)
    sign_bundle(other, keys["other"][0])
    cases.append(("signed by another key", other, ours))

    edited = copy("edited")
    _edit_manifest(edited, lambda d: [c.update(threshold=-1e6) for c in d["calibration"].values()])
    cases.append(("manifest edited after signing", edited, ours))
    spaced = copy("spaced")  # the same content (and content hash), other bytes
    (spaced / MANIFEST_FILE).write_bytes((spaced / MANIFEST_FILE).read_bytes() + b"\n")
    cases.append(("manifest bytes changed", spaced, ours))
    damaged = copy("damaged graph")  # the signature holds; the graph's hash does not
    graph = damaged / graph_file("fp32")
    graph.write_bytes(graph.read_bytes() + b"\0")
    cases.append(("a graph changed after signing", damaged, ours))
    linked = copy("signature symlink")
    (linked / SIGNATURE_FILE).rename(root / "signature-outside.json")
    (linked / SIGNATURE_FILE).symlink_to(root / "signature-outside.json")
    cases.append(("signature a symlink", linked, ours))
    folder_sig = copy("signature folder")
    (folder_sig / SIGNATURE_FILE).unlink()
    (folder_sig / SIGNATURE_FILE).mkdir()
    cases.append(("signature a folder", folder_sig, ours))
    for name, text in _signature_cases(signed).items():
        bundle = copy(name)
        (bundle / SIGNATURE_FILE).write_text(text)
        cases.append((name, bundle, ours))

    bad_keys = root / "bad-keys"
    bad_keys.mkdir()
    for name, data in {
        "key garbage": b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        "key empty": b"",
        "key is a private key": ours_private.read_bytes(),
        "key rsa": _pem(rsa.generate_private_key(65537, 2048)),
        "key ed448": _pem(ed448.Ed448PrivateKey.generate()),
        "key too large": b"x" * 20000,
    }.items():
        path = bad_keys / f"{name.replace(' ', '-')}.pub"
        path.write_bytes(data)
        cases.append((name, signed, path))
    cases.append(("key missing", signed, root / "absent.pub"))
    empty = root / "empty-trust"
    empty.mkdir()
    (empty / "readme.txt").write_text("no keys")
    cases.append(("key folder without keys", signed, empty))
    mixed = root / "mixed-trust"
    mixed.mkdir()
    shutil.copy(ours, mixed / "ours.pub")
    (mixed / "zz-broken.pem").write_bytes(b"garbage")
    cases.append(("key folder with a broken key", signed, mixed))
    return cases


def python_answer(bundle: Path, trust: Path) -> tuple[str, str]:
    """(the native status the Python runtime's answer corresponds to, its message)."""
    try:
        read_manifest(bundle, trust=trust)
        return "NPGMF_OK", ""
    except (SignatureError, SigningKeyError, BundleError) as exc:
        return next(v for k, v in NATIVE_STATUS.items() if isinstance(exc, k)), str(exc)


def _compare(name: str, python: tuple[str, str], native: tuple[str, str]) -> None:
    assert native[0] == python[0], (name, native, python)
    assert "\n" not in native[1], name
    if name in OWN_WORDING:
        head, tail = python[1].split(" (")[0], python[1].rsplit(")", 1)[-1]
        assert native[1].startswith(head + " (") and native[1].endswith(")" + tail), (name, native, python)
    else:
        assert native[1] == python[1], name


@pytest.fixture(scope="module")
def cases(graph_bundle, tmp_path_factory) -> list[tuple[str, Path, Path]]:
    return signing_cases(graph_bundle, tmp_path_factory.mktemp("signing"))


def test_native_trust_gives_the_python_runtimes_answers(native_lib, cases):
    answers = {}
    for name, bundle, trust in cases:
        try:
            native_lib.open(bundle, trust=trust, self_test=False).close()
            native = ("NPGMF_OK", "")
        except NativeError as exc:
            native = (exc.status, str(exc))
        _compare(name, python_answer(bundle, trust), native)
        answers[name] = native[0]
    accepted = {name for name, status in answers.items() if status == "NPGMF_OK"}
    # key_id only names the signer in messages: a valid signature by a trusted key is what is accepted
    assert accepted == {
        "signed, key file",
        "signed, key folder",
        "signed, folder of two keys",
        "signature without key id",
        "signature key id a number",
        "signature key id unicode",
    }
    assert answers["a graph changed after signing"] == "NPGMF_BUNDLE_ERROR"  # signed, then the hash refuses


def test_trust_is_ignored_without_it_and_by_a_first_abi_caller(native_lib, cases):
    """No trust: an unsigned bundle opens as before. A caller compiled before `trust` existed passes a
    shorter struct, which the library reads only as far as it goes (abi_test.c checks the init's writes)."""
    unsigned = dict((name, bundle) for name, bundle, _ in cases)["unsigned"]
    native_lib.open(unsigned, self_test=False).close()
    options = native_lib.options(self_test=False, trust=Path("/nonexistent.pub"))
    options.struct_size -= 8  # version 1's size: `trust` beyond it
    handle = ctypes.c_void_p()
    opened = native_lib.lib.npgmf_open(str(unsigned).encode(), ctypes.byref(options), ctypes.byref(handle))
    native_lib.check(opened)
    native_lib.lib.npgmf_close(handle)
    options.struct_size += 8
    options.trust = b""  # an empty string names no key: refused, never taken for "no check"
    opened = native_lib.lib.npgmf_open(str(unsigned).encode(), ctypes.byref(options), ctypes.byref(handle))
    assert STATUS_NAMES[opened] == "NPGMF_INVALID_ARGUMENT" and "trust is empty" in native_lib.last_error()


def test_signature_cases_are_clean_statuses_under_asan_and_ubsan(asan_build, cases, tmp_path):
    options = [{"trust": str(trust), "self_test": False} for _, _, trust in cases]
    listed = [{"call": "open", "name": name, "bundle": str(bundle), "options": option}
              for (name, bundle, _), option in zip(cases, options, strict=True)]  # fmt: skip
    results = run_under_asan(asan_build, listed, tmp_path)[1:]
    for (name, bundle, trust), got in zip(cases, results, strict=True):
        _compare(name, python_answer(bundle, trust), (got["status"], got["message"]))


def test_npgmf_inspect_trust(native_build, cases, tiny_run):
    by_name = {name: (bundle, trust) for name, bundle, trust in cases}
    image = tiny_run[1].test[0].image_path
    bundle, trust = by_name["signed, key file"]
    done = subprocess.run([native_build / "npgmf-inspect", "--trust", trust, bundle, image],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["error"] == "", done.stderr
    bundle, trust = by_name["manifest edited after signing"]
    done = subprocess.run([native_build / "npgmf-inspect", "--trust", trust, bundle, image],
                          capture_output=True, text=True)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"npgmf-inspect: {python_answer(bundle, trust)[1]}\n"


def test_describe_reports_the_signature_verified_at_open(native_lib, native_build, cases):
    """npgmf_describe and `npgmf-inspect --describe` say whether the signature was verified at open and by
    which key: the one Python's check_signature finds (in a folder of two, the signer, not the first), and
    nothing without trust. A caller compiled before these fields (libnpgmf 0.2's shorter npgmf_info) gets
    its own fields, and nothing is written past them."""
    by_name = {name: (bundle, trust) for name, bundle, trust in cases}
    for name in ("signed, key file", "signed, folder of two keys"):
        bundle, trust = by_name[name]
        signer = check_signature(bundle, (bundle / MANIFEST_FILE).read_bytes(), trust).key_id
        with native_lib.open(bundle, trust=trust, self_test=False) as native:
            info = native.describe()
            assert (info.signature_verified, info.signed_by.decode()) == (1, signer), name
            old = Info()
            ctypes.memset(ctypes.byref(old), 0x5A, ctypes.sizeof(Info))
            old.struct_size = Info.signature_verified.offset  # where 0.2's npgmf_info ended
            native_lib.check(native_lib.lib.npgmf_describe(native.handle, ctypes.byref(old)))
            assert (old.precision, old.threshold, old.self_test_max_flips) == (
                info.precision, info.threshold, info.self_test_max_flips
            )  # fmt: skip
            size = old.struct_size
            past = ctypes.string_at(ctypes.addressof(old) + size, ctypes.sizeof(Info) - size)
            assert past == b"\x5a" * len(past), name
        described = subprocess.run([native_build / "npgmf-inspect", "--trust", trust, "--describe", bundle],
                                   capture_output=True, text=True)  # fmt: skip
        assert described.returncode == 0, described.stderr
        line = json.loads(described.stdout)
        assert (line["signature_verified"], line["signed_by"]) == (True, signer), name
    bundle, _ = by_name["signed, key file"]  # signed, opened without trust: not checked
    with native_lib.open(bundle, self_test=False) as native:
        info = native.describe()
    assert (info.signature_verified, info.signed_by) == (0, b"")
    command = [native_build / "npgmf-inspect", "--describe", bundle]
    line = json.loads(subprocess.run(command, capture_output=True, text=True).stdout)
    assert (line["signature_verified"], line["signed_by"], line["self_test_ran"]) == (False, "", True)
