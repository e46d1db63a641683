"""The Python environment PyTriton's backend stub runs in, kept apart from the toolkit's numpy 2.

PyTriton's python-backend stub is compiled against numpy 1.x and misreads tensors under numpy 2, while the
toolkit needs numpy 2 (OpenCV). The stub is a separate process that takes the `python` first on its PATH,
so the server points it at a small virtual environment beside the toolkit's (numpy<2 and a matching
ml_dtypes, seeing the toolkit's site-packages after its own through a .pth file); they exchange raw tensor
bytes, not numpy objects. `make setup` creates it; so does `python -m npgmf_edge.serve.stub_env`.
`libpython_dir` gives the interpreter's own library folder, put first on the stub's LD_LIBRARY_PATH so a
pyenv-built interpreter does not mix two standard libraries (docs/SERVE.md).

Example:
    >>> path = default_stub_env()
    >>> stub_env_problem(path) or "ready"
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from npgmf_edge.errors import ServeError

STUB_ENV_VARIABLE = "NPGMF_TRITON_STUB_ENV"
STUB_ENV_NAME = "triton-stub-env"
# What the stub needs in place of the toolkit's packages: numpy 1.x and an ml_dtypes built for it
# (tritonclient, which pytriton imports, imports ml_dtypes).
STUB_PACKAGES = ("numpy>=1.21,<2", "ml_dtypes>=0.5,<=0.5.4")
MAIN_SITE_PTH = "zz_npgmf_edge_main_site.pth"
# numpy 1.26, the last 1.x, has wheels up to Python 3.12: no stub environment can be made for a newer one.
NUMPY1_LAST_PYTHON = (3, 12)


def numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def stub_env_unavailable() -> str | None:
    """Why no interpreter here can run PyTriton's stub (numpy 2 here, no numpy 1 for this Python), or None."""
    if numpy_major() < 2 or sys.version_info[:2] <= NUMPY1_LAST_PYTHON:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"PyTriton's backend stub needs numpy 1.x, which has no wheel for Python {version}"


def default_stub_env() -> Path:
    """$NPGMF_TRITON_STUB_ENV, else `triton-stub-env` inside the toolkit's environment (sys.prefix)."""
    return Path(os.environ.get(STUB_ENV_VARIABLE) or Path(sys.prefix) / STUB_ENV_NAME)


def _site_packages(root: Path) -> Path:
    return root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def stub_env_problem(root: Path) -> str | None:
    """Why `root` cannot serve as the stub's environment, or None when it can."""
    site = _site_packages(root)
    if not (root / "bin" / "python").exists() or not site.is_dir():
        return f"{root} is not a Python {sys.version_info.major}.{sys.version_info.minor} environment"
    if not any(p.name.startswith("numpy-1.") and p.suffix == ".dist-info" for p in site.iterdir()):
        return f"{root} holds no numpy 1.x"
    if not (site / MAIN_SITE_PTH).is_file():
        return f"{root} does not see the toolkit's packages ({MAIN_SITE_PTH} is missing)"
    return None


def create_stub_env(root: Path) -> Path:
    """Create (or repair) the stub's environment at `root`: a venv without pip, numpy<2 installed into it
    by this interpreter's pip, and a .pth file adding the toolkit's site-packages after its own."""
    root = Path(root)
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=root.exists()).create(root)
    site = _site_packages(root)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    result = subprocess.run([*command, *STUB_PACKAGES], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServeError(f"installing {', '.join(STUB_PACKAGES)} into {site} failed: {result.stderr.strip()}")
    main_sites = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / MAIN_SITE_PTH).write_text("".join(f"{path}\n" for path in main_sites))
    return root


def python_backend_env() -> Path | None:
    """The environment the stub must run in: None when the toolkit's own will do (numpy 1.x), else the
    checked stub environment; ServeError saying how to create it when it is missing or broken."""
    if numpy_major() < 2:
        return None
    if (reason := stub_env_unavailable()) is not None:
        raise ServeError(reason)
    root = default_stub_env()
    problem = stub_env_problem(root)
    if problem is not None:
        raise ServeError(
            f"PyTriton's backend stub needs numpy 1.x in its own environment and {problem}; create it with "
            f"`{sys.executable} -m npgmf_edge.serve.stub_env` (make setup does), or set "
            f"{STUB_ENV_VARIABLE} to one"
        )
    return root


def libpython_dir() -> str | None:
    """The folder holding this interpreter's own libpython3.X.so, when it has one."""
    folder, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if folder and library and (Path(folder) / library).exists():
        return str(folder)
    return None


def main() -> None:
    """`python -m npgmf_edge.serve.stub_env [PATH]`: create the stub's environment (idempotent)."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default_stub_env()
    if numpy_major() < 2:
        print(f"numpy {__import__('numpy').__version__}: the stub runs in this environment, nothing to do")
        return
    if (reason := stub_env_unavailable()) is not None:
        print(f"Triton serving is unavailable here: {reason}")  # not an error: the rest of the toolkit works
        return
    if stub_env_problem(root) is None:
        print(f"{root}: ready")
        return
    create_stub_env(root)
    problem = stub_env_problem(root)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    print(f"{root}: created")


if __name__ == "__main__":
    main()
