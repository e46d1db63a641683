"""What a machine's arithmetic depends on: CPU features and backend versions, in one dictionary.

Recorded in the manifest by the export (beside the self-test's expected results) and reported by a
station whose self-test fails, so the message can say *why* the numbers differ: an x86 CPU without
`avx512_vnni` / `avx_vnni` sums INT8 products through saturating int16 pairs, an ARM core without
`asimddp` (dotprod) takes another int8 path, a GPU runs another TensorRT version. Standard library only.

Example:
    >>> machine_facts()["cpu_features"]
    ['avx2', 'avx512_vnni', 'avx512f', 'avx_vnni', 'f16c', 'fma']
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# The flags that change which INT8 / FP16 kernels a backend picks (x86 "flags", ARM "Features").
RELEVANT_CPU_FEATURES = frozenset(
    {
        "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
        "asimd", "asimddp", "asimdhp", "i8mm", "sve", "sve2",
    }
)  # fmt: skip
VNNI_FEATURES = frozenset({"avx512_vnni", "avx_vnni"})
BACKEND_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12", "numpy", "tensorrt")


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The RELEVANT_CPU_FEATURES this CPU reports (Linux /proc/cpuinfo; empty where unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(RELEVANT_CPU_FEATURES & set(value.split()))
    return []


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
