"""The bundle manifest: the only contract between export and runtime, read and written here alone.

A bundle is a directory:
    manifest.json          this contract (schema_version first; SHA-256 of every other file)
    model.<precision>.onnx image -> logical map + patch features (knn "faiss"), or
                           image -> fused map + image score (+ branch maps) (knn "graph")
    coreset.faiss, .npy    the structural branch's coreset (knn "faiss")
    *.engine, timing.cache TensorRT engines and their builder's timing cache (where built)

`read_manifest` refuses a bundle it cannot trust, with a message naming the file and what to do: a newer
`schema_version` (upgrade the toolkit), a missing file or a changed byte (re-export), a coreset whose
dimension differs from the graph's patch features. Older schema versions go through `MIGRATIONS`, so old
bundles keep loading. numpy and the standard library only: the runtime imports this without torch.

Example:
    >>> manifest = read_manifest(Path("bundle"))
    >>> manifest.graphs["fp32"].file, manifest.calibration["fp32"].threshold
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npgmf_edge.calibration import Calibration
from npgmf_edge.calibration.calibrate import LEGACY_KEYS, upgrade_legacy_calibration
from npgmf_edge.errors import BundleError
from npgmf_edge.fileio import save_json
from npgmf_edge.runtime.backends.base import GraphSpec

SCHEMA_VERSION = 2
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
KNN_MODES = ("faiss", "graph")
CORESET_FAISS = "coreset.faiss"
CORESET_NPY = "coreset.npy"
TIMING_CACHE = "timing.cache"
HASH_CHUNK = 1 << 20
SELF_HASH_KEY = "manifest_sha256"


def _fusion_choice_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2: each precision's calibration gains the fusion level, the branch image-score statistics
    and the record of how the fusion was chosen; a v1 bundle fused at pixel level with fixed weights,
    which is what it keeps doing."""
    calibration = data.get("calibration")
    if isinstance(calibration, dict):
        data["calibration"] = {
            p: upgrade_legacy_calibration(c) if isinstance(c, dict) and set(c) == LEGACY_KEYS else c
            for p, c in calibration.items()
        }
    return data


# schema_version n -> function turning a version-n manifest dict into version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _fusion_choice_v2}


def graph_file(precision: str) -> str:
    return f"model.{precision}.onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A checked manifest. `graphs`, `calibration` and `engines` are keyed by precision."""

    root: Path
    schema_version: int
    toolkit_version: str
    category: str
    preset: str
    image_size: int
    max_batch: int
    knn: str
    graphs: dict[str, GraphSpec]
    calibration: dict[str, Calibration]
    coreset: dict[str, Any] | None
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.graphs)

    @property
    def knn_search(self) -> str:
        """The in-graph kNN head's search ("exact" or "int8"; bundles from before the option: exact)."""
        return (self.coreset or {}).get("search", "exact")


def _content_sha256(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's own content (canonical JSON, without this field): a changed byte in
    manifest.json itself is caught too, not only in the files it lists."""
    content = {k: v for k, v in manifest.items() if k != SELF_HASH_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in `root` (except the manifest) into `files`, write the manifest last; returns it."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    manifest["files"] = {p.name: sha256_file(p) for p in files}
    manifest[SELF_HASH_KEY] = _content_sha256(manifest)
    save_json(manifest, root / MANIFEST_FILE)
    return manifest


def _migrate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    version = data.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: schema_version {version!r} is not a positive integer; re-export")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version}, newer than this toolkit reads ({SCHEMA_VERSION}); "
            "upgrade npgmf-edge on this station, or export the bundle with the version installed here"
        )
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version = data["schema_version"] = version + 1
    return data


def first_mismatch(root: Path, files: dict[str, str]) -> tuple[Path, str] | None:
    """The first listed file that is missing or whose SHA-256 differs from the recorded one, as
    (path, "missing" | "changed"); None when all match. Bundles and run directories both check this way."""
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            return path, "missing"
        if sha256_file(path) != expected:
            return path, "changed"
    return None


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every listed file is present and has its recorded SHA-256, else BundleError naming it."""
    mismatch = first_mismatch(root, files)
    if mismatch is None:
        return
    path, kind = mismatch
    if kind == "missing":
        raise BundleError(f"{path} is missing from the bundle; re-export it with `npgmf-edge export`")
    raise BundleError(
        f"{path} does not match the SHA-256 recorded in {root / MANIFEST_FILE} (damaged or "
        "changed after export); re-export the bundle with `npgmf-edge export`"
    )


def _graph_spec(precision: str, entry: dict[str, Any], knn: str, max_batch: int) -> GraphSpec:
    return GraphSpec(
        file=entry["file"],
        precision=precision,
        knn=knn,
        input_name=entry["input"]["name"],
        input_shape=tuple(entry["input"]["shape"]),
        max_batch=max_batch,
        outputs={name: tuple(shape) for name, shape in entry["outputs"].items()},
    )


def read_manifest(root: Path, *, check_files: bool = True) -> Manifest:
    """Read, migrate and check a bundle's manifest (and, by default, the SHA-256 of every file)."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory; create one with `npgmf-edge export RUN`")
    if not path.is_file():
        raise BundleError(f"{path} is missing: {root} is not a complete bundle; re-export it")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {path} ({exc}); re-export the bundle") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object; re-export the bundle")
    if data.get(SELF_HASH_KEY) != _content_sha256(data):
        raise BundleError(f"{path} was changed after export (its content hash does not match); re-export it")
    data = _migrate(data, path)
    try:
        if check_files:
            verify_files(root, data["files"])
        knn, max_batch = data["knn"], int(data["input"]["max_batch"])
        if knn not in KNN_MODES:
            raise BundleError(f"{path}: unknown knn mode {knn!r}; expected one of {', '.join(KNN_MODES)}")
        graphs = {p: _graph_spec(p, g, knn, max_batch) for p, g in data["graphs"].items()}
        calibration = {p: Calibration.from_dict(c) for p, c in data["calibration"].items()}
        manifest = Manifest(
            root=root,
            schema_version=data["schema_version"],
            toolkit_version=str(data["toolkit_version"]),
            category=str(data["category"]),
            preset=str(data["preset"]),
            image_size=int(data["input"]["size"]),
            max_batch=max_batch,
            knn=knn,
            graphs=graphs,
            calibration=calibration,
            coreset=data.get("coreset"),
            engines=dict(data.get("engines", {})),
            raw=data,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path} is malformed ({type(exc).__name__}: {exc}); re-export the bundle") from exc
    _check_consistency(manifest, path)
    return manifest


def _check_consistency(manifest: Manifest, path: Path) -> None:
    unknown = set(manifest.graphs) - set(PRECISIONS)
    if unknown or not manifest.graphs:
        raise BundleError(
            f"{path}: graphs must be some of {', '.join(PRECISIONS)}, got {sorted(manifest.graphs)}"
        )
    missing = set(manifest.graphs) - set(manifest.calibration)
    if missing:
        raise BundleError(f"{path}: no calibration for precision(s) {', '.join(sorted(missing))}; re-export")
    if manifest.knn == "faiss":
        if manifest.coreset is None:
            raise BundleError(f"{path}: a knn 'faiss' bundle needs a coreset entry; re-export")
        for spec in manifest.graphs.values():
            dim = spec.outputs["patch_features"][0]
            if dim != manifest.coreset["dim"]:
                raise BundleError(
                    f"{path}: {spec.file} yields {dim}-dim patch features but the coreset has dimension "
                    f"{manifest.coreset['dim']}; the files come from different exports, re-export the bundle"
                )
