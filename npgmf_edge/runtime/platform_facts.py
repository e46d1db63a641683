"""What a machine's arithmetic depends on: CPU features and backend versions, in one dictionary.

Recorded in the manifest by the export (beside the self-test's expected results) and reported by a
station whose self-test fails, so the message can say *why* the numbers differ: an x86 CPU without
`avx512_vnni` / `avx_vnni` sums INT8 products through saturating int16 pairs, an ARM core without
`asimddp` (dotprod) takes another int8 path, a GPU runs another TensorRT version. Standard library and
numpy only.

Example:
    >>> machine_facts()["cpu_features"]
    ['avx2', 'avx512_bf16', 'avx512_vnni', 'avx512bw', 'avx512f', 'avx_vnni', 'f16c', 'fma']
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# The features that change which INT8 / FP16 kernels a backend picks, by numpy's CPUID-based names.
NUMPY_FEATURES = {
    "AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
    "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
    "ASIMD": "asimd", "ASIMDDP": "asimddp", "ASIMDHP": "asimdhp", "SVE": "sve",
}  # fmt: skip
# Relevant features numpy does not detect, read from the kernel's list (x86 "flags", ARM "Features").
CPUINFO_ONLY_FEATURES = frozenset({"avx_vnni", "amx_int8", "i8mm", "sve2"})
VNNI_FEATURES = frozenset({"avx512_vnni", "avx_vnni"})
BACKEND_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12", "numpy", "tensorrt")


def _cpuinfo_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _numpy_cpuid() -> dict[str, bool]:
    from numpy._core._multiarray_umath import __cpu_features__

    return dict(__cpu_features__)


def cpu_features(cpuinfo: str | None = None, cpuid: dict[str, bool] | None = None) -> list[str]:
    """The features this process's CPU offers, as the kernels' dispatch sees them: numpy's CPUID detection
    (right under an emulator, where /proc/cpuinfo shows the host), plus CPUINFO_ONLY_FEATURES from
    /proc/cpuinfo where, on x86, it describes the same CPU (both agree on AVX-512F)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    cpuid = _numpy_cpuid() if cpuid is None else cpuid
    found = {name for key, name in NUMPY_FEATURES.items() if cpuid.get(key)}
    flags = _cpuinfo_flags(cpuinfo)
    x86 = any(key.startswith("AVX") or key.startswith("SSE") for key, value in cpuid.items() if value)
    if not x86 or ("avx512f" in flags) == ("avx512f" in found):
        found |= CPUINFO_ONLY_FEATURES & flags
    return sorted(found)


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "CPU part", "Hardware"):
            return value.strip()
    return platform.processor() or "unknown"


def backend_versions() -> dict[str, str]:
    """Installed versions of the packages whose kernels compute a bundle's numbers."""
    versions = {}
    for name in BACKEND_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_facts() -> dict[str, Any]:
    try:
        cpuinfo = CPUINFO.read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    return {
        "machine": platform.machine(),
        "cpu": _cpu_name(cpuinfo),
        "cpu_features": cpu_features(cpuinfo),
        "backends": backend_versions(),
    }


def describe(facts: dict[str, Any]) -> str:
    """One short phrase: "x86_64 with avx2, avx512_vnni; onnxruntime 1.32.0"."""
    features = ", ".join(facts.get("cpu_features", [])) or "no reported features"
    if facts.get("machine") in ("x86_64", "AMD64") and not VNNI_FEATURES & set(facts.get("cpu_features", [])):
        features += " (no VNNI)"
    versions = ", ".join(f"{k} {v}" for k, v in facts.get("backends", {}).items() if k != "numpy")
    return f"{facts.get('machine', '?')} with {features}; {versions or 'no backend'}"
