"""A bundle on emulated aarch64 CPUs (a Jetson's ISA): its self-test passes and its verdicts equal x86's.

    python scripts/check_aarch64.py BUNDLE IMAGES... [--cpu cortex-a76 --cpu max] [--limit 8]
        [--refused CLIPPED_BUNDLE]
    (or scripts/check_aarch64.sh ..., or `make check-aarch64 BUNDLE=... IMAGES=...`)

Builds, once, in a cache folder (NPGMF_AARCH64_CACHE, default ~/.cache/npgmf-edge/aarch64):
    sysroot/   Debian's arm64 Python of the same minor version as this one, with its library closure,
               extracted (`dpkg -x`) from packages fetched through a private apt state (the system's
               apt configuration and dpkg database are not touched);
    site/      aarch64 wheels of exactly the versions this environment runs (the runtime's dependency
               closure, read from the installed metadata), fetched with `pip download --platform`;
    prefix-CPU/ what `qemu-aarch64 -L` serves: lib, usr and etc linked to the sysroot, and a
               /proc/cpuinfo generated for that CPU model (scripts/aarch64_cpuinfo.py; qemu passes the
               host's x86 one through, and onnxruntime's cpuinfo library segfaults on it).
Then runs `npgmf-edge verify BUNDLE --json`, and each precision's verdicts on IMAGES (the Inspector in
one more process; verify ran the self-test), natively and under `qemu-aarch64 -cpu CPU` for each CPU, and
fails (exit 1) unless every precision passes its self-test everywhere and every image gets the same
verdict as on x86; with `--refused OTHER`, unless OTHER's int8 (`--refused-precision`) fails its
self-test everywhere. Prints one JSON summary.

Emulation checks instruction semantics (NEON / dotprod / SVE kernels, their rounding), not a Jetson's
speed: qemu runs about 20-50x slower than the host. Needs qemu-user (installed with apt-get when run as
root), Debian's apt and network access to Debian's mirror and PyPI on the first run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CPUINFO_SCRIPT = Path(__file__).with_name("aarch64_cpuinfo.py")
DEFAULT_CACHE = Path.home() / ".cache" / "npgmf-edge" / "aarch64"
DEFAULT_CPUS = ("cortex-a76", "max")  # Orin's A78AE is ARMv8.2 + dotprod, as the A76; max adds SVE2, i8mm
# The arm64 Debian packages whose dependency closure is a Python that runs the wheels (libgomp: faiss).
DEBIAN_ROOTS = ("python{v}-minimal", "libpython{v}-stdlib", "libstdc++6", "libgomp1")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
PIP_WHEEL_FLAGS = (
    *(f for p in PLATFORMS for f in ("--platform", p)),
    "--implementation", "cp", "--abi", "cp{nodot}", "--abi", "abi3", "--abi", "none",
    "--python-version", "{v}", "--only-binary=:all:",
)  # fmt: skip


def log(message: str) -> None:
    print(f"[check_aarch64] {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_pins() -> list[str]:
    """`name==version` of every package the runtime needs (pyproject.toml's base dependencies and theirs,
    markers evaluated for this interpreter, extras left out), as installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins, todo = {}, [Requirement(line) for line in project["dependencies"]]
    while todo:
        requirement = todo.pop()
        key = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if key in pins or not (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            continue
        dist = metadata.distribution(requirement.name)
        pins[key] = f"{key}=={dist.version}"
        todo.extend(Requirement(line) for line in dist.requires or [])
    return sorted(pins.values())


def apt_options(cache: Path) -> list[str]:
    """A private apt state for arm64 in `cache`: the system's sources, nothing else of the system's."""
    for folder in ("lists/partial", "archives/partial"):
        (cache / folder).mkdir(parents=True, exist_ok=True)
    status = cache / "status"
    status.touch()
    return [
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
        "-o", f"Dir::State::Lists={cache / 'lists'}", "-o", f"Dir::Cache={cache}",
        "-o", f"Dir::State::status={status}", "-o", "Debug::NoLocking=1",
    ]  # fmt: skip


def build_sysroot(cache: Path, version: str) -> Path:
    """Debian's arm64 python`version` and its closure, extracted into cache/sysroot (once)."""
    sysroot = cache / "sysroot"
    python = sysroot / "usr" / "bin" / f"python{version}"
    if python.is_file():
        return sysroot
    apt = apt_options(cache / "apt")
    log("fetching Debian's arm64 package lists")
    run(["apt-get", *apt, "update", "-qq"])
    roots = [name.format(v=version) for name in DEBIAN_ROOTS]
    listing = run(
        ["apt-cache", *apt, "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *roots],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    packages = sorted({line.strip() for line in listing.splitlines() if re.match(r"^[a-z0-9]", line)})
    packages = [p for p in packages if ":" not in p]  # virtual packages appear as `<name>`, skipped above
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    log(f"downloading {len(packages)} arm64 packages")
    run(["apt-get", *apt, "download", *packages], cwd=debs, stdout=subprocess.DEVNULL)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix="sysroot."))
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(staging)])
    if not (staging / "usr" / "bin" / f"python{version}").is_file():
        raise SystemExit(f"error: the arm64 packages hold no python{version}; is it Debian's version here?")
    shutil.rmtree(sysroot, ignore_errors=True)
    staging.rename(sysroot)
    return sysroot


def build_site(cache: Path, version: str, pins: list[str]) -> Path:
    """The aarch64 wheels of `pins`, installed into cache/site (again whenever the pins change)."""
    site = cache / "site"
    stamp = site / ".pins"
    if stamp.is_file() and stamp.read_text() == "\n".join(pins):
        return site
    flags = [f.format(v=version, nodot=version.replace(".", "")) for f in PIP_WHEEL_FLAGS]
    wheels = cache / "wheels"
    log(f"downloading aarch64 wheels of {len(pins)} packages")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "download", "--no-deps", *flags, "--dest", str(wheels), *pins])
    staging = Path(tempfile.mkdtemp(dir=cache, prefix="site."))
    run([*pip, "install", "--no-deps", "--no-index", "--find-links", str(wheels), *flags,
         "--target", str(staging), *pins])  # fmt: skip
    (staging / ".pins").write_text("\n".join(pins))
    shutil.rmtree(site, ignore_errors=True)
    staging.rename(site)
    return site


def build_prefix(cache: Path, sysroot: Path, version: str, qemu: str, cpu: str) -> Path:
    """cache/prefix-CPU for `qemu-aarch64 -L`: the sysroot's folders and a generated /proc/cpuinfo."""
    prefix = cache / f"prefix-{cpu}"
    (prefix / "proc").mkdir(parents=True, exist_ok=True)
    for name in ("lib", "usr", "etc"):
        link, target = prefix / name, sysroot / name
        if name == "lib" and not target.is_dir():  # merged-/usr packages (Debian 13) ship usr/lib only
            target = sysroot / "usr" / "lib"
        if not link.is_symlink():
            link.symlink_to(target)
    text = run(
        [qemu, "-L", str(prefix), "-cpu", cpu, str(sysroot / "usr" / "bin" / f"python{version}"), "-I", "-S",
         str(CPUINFO_SCRIPT), cpu],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    (prefix / "proc" / "cpuinfo").write_text(text)
    return prefix


def verify(cli: list[str], env: dict[str, str], bundle: Path) -> dict:
    """`verify BUNDLE --json`'s report through `cli` (its exit code is the report's `passed`)."""
    done = subprocess.run([*cli, "verify", str(bundle), "--json"], capture_output=True, text=True, env=env)
    if not done.stdout.strip():
        raise SystemExit(f"error: verify printed nothing (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def verdicts(job: dict) -> dict:
    """In this process (under emulation too): each precision's verdicts and scores on the job's images
    (its self-test ran in `verify` already), and, per refused bundle, whether its `refused_precision`
    fails its self-test here."""
    from npgmf_edge.runtime import Inspector
    from npgmf_edge.runtime.selftest import SelfTestError

    result: dict = {"verdicts": {}, "scores": {}, "refused": {}}
    for precision in job["precisions"]:
        with Inspector.open(job["bundle"], precision=precision, self_test=False) as inspector:
            answers = inspector.inspect(job["images"])
        result["verdicts"][precision] = [a.verdict for a in answers]
        result["scores"][precision] = [a.score for a in answers]
    for bundle in job["refused"]:
        try:
            Inspector.open(bundle, precision=job["refused_precision"]).close()
            result["refused"][bundle] = None
        except SelfTestError as exc:
            result["refused"][bundle] = str(exc)
    return result


def run_station(python: list[str], env: dict[str, str], job: dict) -> dict:
    """`npgmf-edge verify BUNDLE --json` through `python`, then `verdicts(job)` in one more process."""
    tick = time.perf_counter()
    report = verify([*python, "-m", "npgmf_edge"], env, Path(job["bundle"]))
    done = subprocess.run(
        [*python, str(Path(__file__).resolve()), "--job", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"error: the verdict run failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return {"verify": report, **json.loads(done.stdout), "seconds": round(time.perf_counter() - tick, 1)}


def expand(images: list[str], limit: int) -> list[Path]:
    """The image files under `images` (files or folders), sorted, `limit` of them spread evenly."""
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    found = sorted(
        p for item in images for p in ([Path(item)] if Path(item).is_file() else Path(item).rglob("*"))
        if p.suffix.lower() in suffixes
    )  # fmt: skip
    if limit and len(found) > limit:
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    return found


def compare(native: dict, emulated: dict[str, dict]) -> list[str]:
    """What differs from a station's point of view: a failing self-test, a verdict unlike x86's, a bundle
    that should be refused and is not."""
    problems = []
    for name, result in {"x86_64": native, **emulated}.items():
        for row in result["verify"]["rows"]:
            if row["passed"] is not True:
                problems.append(f"{name}: {row['precision']} self-test {row.get('message', 'did not pass')}")
        problems.extend(
            f"{name}: {bundle} passes its self-test, which it must not"
            for bundle, refusal in result["refused"].items()
            if refusal is None
        )
    for cpu, result in emulated.items():
        for precision, answers in result["verdicts"].items():
            if answers != native["verdicts"][precision]:
                expected = native["verdicts"][precision]
                wrong = [i for i, (a, b) in enumerate(zip(answers, expected, strict=True)) if a != b]
                problems.append(f"{cpu}: {precision} verdicts differ from x86 on images {wrong}")
    return problems


def main() -> None:
    if sys.argv[1:2] == ["--job"]:  # the verdict run, in the (emulated) station's Python
        print(json.dumps(verdicts(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("images", nargs="+", help="image files or folders (the verdicts compared)")
    parser.add_argument(
        "--cpu", action="append", help=f"qemu -cpu model (default: {' and '.join(DEFAULT_CPUS)})"
    )
    parser.add_argument(
        "--refused", type=Path, action="append", default=[],
        help="a bundle that must fail its self-test on every CPU (clipped INT8 weights, say)",
    )  # fmt: skip
    parser.add_argument("--refused-precision", default="int8", help="the precision --refused bundles fail")
    parser.add_argument("--limit", type=int, default=8, help="at most this many images, spread (0: all)")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("NPGMF_AARCH64_CACHE", DEFAULT_CACHE))
    )
    args = parser.parse_args()
    if platform.machine() != "x86_64":
        raise SystemExit("error: this compares an x86_64 host with emulated aarch64; run it on x86_64")
    qemu = shutil.which("qemu-aarch64")
    if qemu is None and os.geteuid() == 0:
        run(["apt-get", "install", "-y", "-qq", "qemu-user"], stdout=subprocess.DEVNULL)
        qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise SystemExit("error: no qemu-aarch64; install Debian's qemu-user (apt-get install qemu-user)")
    bundle = args.bundle.resolve()
    refused = [other.resolve() for other in args.refused]
    images = [p.resolve() for p in expand(args.images, args.limit)]
    if not images:
        raise SystemExit(f"error: no images under {' '.join(args.images)}")
    precisions = list(json.loads((bundle / "manifest.json").read_text())["graphs"])
    version, cache = python_version(), args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    sysroot = build_sysroot(cache, version)
    site = build_site(cache, version, runtime_pins())
    work = Path(tempfile.mkdtemp(prefix="check_aarch64."))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "OMP_NUM_THREADS": "2"}
    job = {
        "bundle": str(bundle),
        "images": [str(p) for p in images],
        "precisions": precisions,
        "refused": [str(other) for other in refused],
        "refused_precision": args.refused_precision,
    }
    log(f"x86_64: verify, and the verdicts on {len(images)} images")
    native = run_station([sys.executable], {**env, "PYTHONPATH": str(ROOT)}, job)
    emulated = {}
    for cpu in args.cpu or DEFAULT_CPUS:
        prefix = build_prefix(cache, sysroot, version, qemu, cpu)
        log(f"{cpu}: the same under qemu-aarch64 (slow)")
        command = [qemu, "-L", str(prefix), "-cpu", cpu, str(sysroot / "usr" / "bin" / f"python{version}")]
        emulated[cpu] = run_station(command, {**env, "PYTHONPATH": f"{ROOT}:{site}"}, job)
    problems = compare(native, emulated)
    summary = {
        "bundle": str(bundle),
        "images": [str(p) for p in images],
        "runs": {"x86_64": native, **emulated},
        "problems": problems,
        "passed": not problems,
    }
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
