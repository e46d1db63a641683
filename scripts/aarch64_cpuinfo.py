"""Print a stand-in /proc/cpuinfo for the emulated aarch64 CPU this runs on (under `qemu-aarch64 -cpu X`).

qemu-user passes the host's x86 /proc/cpuinfo through, and onnxruntime's cpuinfo library (which expects
ARM `Features` / `CPU part` lines) segfaults on it. qemu looks under its `-L PREFIX` first, so
scripts/check_aarch64.sh writes this script's output to PREFIX/proc/cpuinfo. The feature names come from
the emulated CPU's own `getauxval(AT_HWCAP / AT_HWCAP2)` (bit names of Linux's arm64 uapi hwcap.h), so
`-cpu max` lists sve2 and i8mm and `-cpu cortex-a72` lists no asimddp; nothing is copied from a real
machine. Standard library only: it runs before the wheels are installed.

Example (run by check_aarch64.sh):
    qemu-aarch64 -L PREFIX -cpu cortex-a76 SYSROOT/usr/bin/python3.11 aarch64_cpuinfo.py cortex-a76
"""

from __future__ import annotations

import ctypes
import os
import sys

AT_HWCAP, AT_HWCAP2 = 16, 26
# fmt: off
HWCAP = [  # bit n of AT_HWCAP is the n-th name (arch/arm64/include/uapi/asm/hwcap.h)
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
    "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
    "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg",
]
HWCAP2 = [  # bit n of AT_HWCAP2 is the n-th name (arch/arm64/include/uapi/asm/hwcap.h)
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
    "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv",
    "afp", "rpres",
]
# fmt: on
# MIDR part numbers (Arm's TRMs) of the models qemu 7.2 emulates; `max` is built on the Cortex-A57 there.
CPU_PART = {
    "cortex-a53": 0xD03,
    "cortex-a57": 0xD07,
    "cortex-a72": 0xD08,
    "cortex-a76": 0xD0B,
    "neoverse-n1": 0xD0C,
    "cortex-a78ae": 0xD42,
    "max": 0xD07,
}  # fmt: skip


def feature_names(hwcap: int, hwcap2: int) -> list[str]:
    """The names of the set bits, as the kernel's `Features` line spells them."""
    names = [name for bit, name in enumerate(HWCAP) if hwcap >> bit & 1]
    return names + [name for bit, name in enumerate(HWCAP2) if hwcap2 >> bit & 1]


def cpuinfo(model: str, hwcap: int, hwcap2: int, processors: int) -> str:
    """One block per processor, in the kernel's arm64 format (arch/arm64/kernel/cpuinfo.c)."""
    block = (
        "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part:#05x}\nCPU revision\t: 0\n\n"
    )
    features = " ".join(feature_names(hwcap, hwcap2))
    part = CPU_PART.get(model, CPU_PART["max"])
    return "".join(block.format(n=n, features=features, part=part) for n in range(processors))


def main() -> None:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    model = sys.argv[1] if len(sys.argv) > 1 else "max"
    sys.stdout.write(cpuinfo(model, libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2), os.cpu_count() or 1))


if __name__ == "__main__":
    main()
