"""The bundle manifest: the only contract between export and runtime, read and written here alone
(the bundle's files: docs/DEPLOY.md "Bundle layout").

`read_manifest` refuses a bundle it cannot trust, naming the file and what to do: a newer
`schema_version`, a missing file or a changed byte, a coreset unlike the graph's patch features. Older
schemas go through `MIGRATIONS`, so old bundles keep loading. Every value is hostile until checked
(docs/SECURITY.md): bounded JSON nesting, named files plain, inside the bundle and hashed, bounded sizes,
self-test budgets no larger than the export measured; with `trust`, the signature (`runtime.signing`)
before anything else. numpy and the standard library only: the runtime imports this without torch.

Example:
    >>> manifest = read_manifest(Path("bundle"))
    >>> manifest.graphs["fp32"].file, manifest.calibration["fp32"].threshold
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge import __version__
from npgmf_edge.calibration import Calibration
from npgmf_edge.calibration.calibrate import LEGACY_KEYS, upgrade_legacy_calibration
from npgmf_edge.errors import BundleError
from npgmf_edge.fileio import check_hashes, save_json, sha256_file
from npgmf_edge.runtime import selftest
from npgmf_edge.runtime.backends.base import GraphSpec
from npgmf_edge.runtime.signing import MANIFEST_FILE, check_signature, load_private_key, sign_manifest_bytes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
SELFTEST_REQUIRED_FROM = 2  # schema 2: `selftest` mandatory, its tolerances checked against the export's
# schema 3: the self-test judges against the FP32 reference (`runtime.selftest`), in .npy files
PRECISIONS = ("fp32", "fp16", "int8")
KNN_MODES = ("faiss", "graph")
CORESET_FAISS = "coreset.faiss"
CORESET_NPY = "coreset.npy"
TIMING_CACHE = "timing.cache"
SELF_HASH_KEY = "manifest_sha256"
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few KB
MAX_NESTING = 32  # a real manifest nests 5 deep; checked before parsing (200k `[` overflow json's recursion)
MAX_INPUT_SIZE = 8192  # input side in pixels: one float32 image of 8192² is already 805 MB
MAX_BATCH_LIMIT = 4096
MAX_GOLDEN_IMAGES = 256


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: each calibration reads as the pixel-level fusion with fixed weights it always was; the
    stricter schema-2 checks (`selftest` mandatory) are not asked of it (a warning says so)."""
    calibration = data.get("calibration")
    if isinstance(calibration, dict):
        data["calibration"] = {
            p: upgrade_legacy_calibration(c) if isinstance(c, dict) and set(c) == LEGACY_KEYS else c
            for p, c in calibration.items()
        }
    return data


def _from_schema_2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 -> 3: the self-test, judged against the export machine's answers (`selftest.npz`), is
    judged against the FP32 reference: the old entry's FP32 scores and threshold give each precision's
    score error, budget and verdict flips; the map check only where the archive has FP32's digests. A
    self-test without any FP32 answer is dropped (the bundle opens with the no-self-test warning)."""
    entry = data.get("selftest")
    if not isinstance(entry, dict) or not isinstance(entry.get("precisions"), dict):
        return data
    precisions = entry["precisions"]
    reference = entry.get("reference") or (precisions.get("fp32") or {}).get("scores")
    if not isinstance(reference, list):
        data.pop("selftest")
        return data
    fp32_calibration = (data.get("calibration") or {}).get("fp32")
    reference_threshold = fp32_calibration.get("threshold") if isinstance(fp32_calibration, dict) else None
    entry.update(legacy_file=entry.pop("file", selftest.LEGACY_FILE), reference=reference)
    entry["reference_threshold"] = reference_threshold
    for precision, expected in precisions.items():
        error = selftest.score_error(np.asarray(expected["scores"], dtype=np.float64), np.asarray(reference))
        expected.update(score_error=error, budget=selftest.budget_for(precision, error))
        expected.update(map_error=None, map_budget=None, verdict_flips=None, max_flips=None)
        if precision == "fp32":
            expected.update(map_error=0.0, map_budget=selftest.budget_for("fp32", 0.0))
        if reference_threshold is not None:
            threshold = data["calibration"][precision]["threshold"]
            flips = selftest.verdict_flips(expected["scores"], threshold, reference, reference_threshold)
            expected.update(verdict_flips=flips, max_flips=flips + selftest.FLIP_ALLOWANCE)
        expected.pop("tolerance", None)
    return data


# schema_version n -> function turning a version-n manifest dict into version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _from_schema_1, 2: _from_schema_2}


def graph_file(precision: str) -> str:
    return f"model.{precision}.onnx"


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

    @property
    def structural_aggregation(self) -> str:
        """How the graph aggregates the structural patch features ("reference" or "local_mean"; bundles
        from before the option: "reference", the only one there was). The graph computes it; the
        runtime only reports it."""
        return (self.coreset or {}).get("aggregation", "reference")


def _content_sha256(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's own content (canonical JSON, without this field): a changed byte in
    manifest.json itself is caught too, not only in the files it lists."""
    content = {k: v for k, v in manifest.items() if k != SELF_HASH_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def graph_entry(path: Path, spec: GraphSpec, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The `graphs` entry of one written graph: its file, input and output shapes (per image)."""
    return {
        "file": path.name,
        "precision": spec.precision,
        "input": {"name": spec.input_name, "shape": list(spec.input_shape), "dtype": "float32"},
        "outputs": {name: list(value.shape[1:]) for name, value in outputs.items()},
    }


def coreset_entry(
    coreset: np.ndarray, grid: tuple[int, int], aggregation: str, knn: str, search: str, candidates: int
) -> dict[str, Any]:
    """The `coreset` section: size, patch grid and aggregation of the patch features, and how it is searched
    (knn "graph": `search`, with its re-ranked `candidates` for "int8"; knn "faiss": its two files)."""
    entry: dict[str, Any] = {
        "count": len(coreset),
        "dim": int(coreset.shape[1]),
        "metric": "l2",
        "grid": list(grid),
        "aggregation": aggregation,  # what the graph's patch features are
    }
    if knn == "graph":
        entry["search"] = search
        if search == "int8":
            entry["candidates"] = candidates
    else:
        entry["files"] = [CORESET_FAISS, CORESET_NPY]
    return entry


def build_manifest(
    *,
    category: str,
    preset: str,
    input_name: str,
    image_size: int,
    max_batch: int,
    knn: str,
    graphs: dict[str, Any],
    coreset: dict[str, Any],
    calibration: dict[str, Any],
    quality: dict[str, Any],
    engines: dict[str, Any],
    tensorrt: str,
    source_run: Path,
) -> dict[str, Any]:
    """The manifest's content, less what `write_manifest` adds (schema, file hashes, self-hash) and the
    `selftest` section the export adds once the staged bundle can run."""
    return {
        "toolkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "category": category,
        "preset": preset,
        "input": {
            "name": input_name,
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "float32",
            "range": [0, 255],
            "accepts": "raw RGB pixels, uint8 or float in [0, 255]; normalisation is inside the graph",
            "size": image_size,
            "max_batch": max_batch,
        },
        "knn": knn,
        "graphs": graphs,
        "coreset": coreset,
        "calibration": calibration,
        "quality": quality,
        "engines": engines,
        "tensorrt": tensorrt,
        "source_run": str(source_run),
    }


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


def _graph_spec(precision: str, entry: dict[str, Any], knn: str, max_batch: int) -> GraphSpec:
    return GraphSpec(
        file=entry["file"],
        precision=precision,
        knn=knn,
        input_name=str(entry["input"]["name"]),
        input_shape=tuple(_shape(entry["input"]["shape"], f"graphs.{precision}.input.shape")),
        max_batch=max_batch,
        outputs={
            str(name): tuple(_shape(shape, f"graphs.{precision}.outputs.{name}"))
            for name, shape in entry["outputs"].items()
        },
    )


def _calibration(precision: str, entry: Any) -> Calibration:
    """`Calibration.from_dict` (keys present, values finite) and the ranges a calibration can have: a
    standard deviation above 0 (map and image-score statistics), weights and smoothing at least 0, a
    false-alarm rate in [0, 1]."""
    calibration = Calibration.from_dict(entry)
    image_stats = (calibration.structural_image, calibration.logical_image)
    stds = (calibration.structural.std, calibration.logical.std, *(s.std for s in image_stats if s))
    weights = (calibration.weight_structural, calibration.weight_logical, calibration.gaussian_sigma)
    if min(stds) <= 0 or min(weights) < 0 or not 0 <= calibration.false_alarm_rate <= 1:
        raise ValueError(
            f"calibration.{precision} is out of range (std {stds}, weights and sigma {weights}, false-alarm "
            f"rate {calibration.false_alarm_rate})"
        )
    return calibration


def _bounded_int(value: Any, name: str, upper: int, lower: int = 1) -> int:
    """`value` as an int in lower..upper (a JSON bool, float or string is not one), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not lower <= value <= upper:
        raise ValueError(f"{name} must be an integer in {lower}..{upper}, got {value!r}")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 4:
        raise ValueError(f"{name} must be a list of at most 4 sizes, got {value!r}")
    return [_bounded_int(v, name, 1 << 20) for v in value]


def _nesting_depth(text: bytes) -> int:
    """How deep `[` and `{` nest in JSON `text`, brackets inside strings not counted: vectorised and
    linear, no recursion, so a hostile manifest is refused before `json.loads` recurses through it."""
    chars = np.frombuffer(text, dtype=np.uint8)
    index = np.arange(len(chars))
    backslash = chars == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, index))  # backslash runs end where this lags
    run_before = np.concatenate(([0], (index - last_other)[:-1]))  # backslashes just before each char
    quote = (chars == ord('"')) & (run_before % 2 == 0)
    outside = np.cumsum(quote) % 2 == 0  # a bracket after an even count of real quotes is structural
    opens = np.isin(chars, np.frombuffer(b"[{", np.uint8)) & outside
    closes = np.isin(chars, np.frombuffer(b"]}", np.uint8)) & outside
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


def _load_json(root: Path, path: Path, trust: Path | None) -> dict[str, Any]:
    """The manifest's JSON object, its bytes read once: the signature (with `trust`), the nesting and the
    parse all see the same bytes."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is {size} bytes, not a manifest (at most {MAX_MANIFEST_BYTES}); re-export")
    data = path.read_bytes()
    if trust is not None:
        check_signature(root, data, Path(trust))
    try:
        if _nesting_depth(data) > MAX_NESTING:
            raise ValueError(f"nested deeper than {MAX_NESTING} levels")
        value = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"cannot read {path} ({exc}); re-export the bundle") from exc
    if not isinstance(value, dict):
        raise BundleError(f"{path} is not a JSON object; re-export the bundle")
    return value


def read_manifest(
    root: Path, *, check_files: bool = True, trust: Path | None = None, require_selftest: bool = True
) -> Manifest:
    """Read, migrate and check a bundle's manifest (and, by default, the SHA-256 of every file). `trust`:
    public keys one of which must have signed it. `require_selftest=False`: the export's staging folder."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory; create one with `npgmf-edge export RUN`")
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in {root}: it is not a complete bundle; re-export it")
    data = _load_json(root, path, trust)
    if data.get(SELF_HASH_KEY) != _content_sha256(data):
        raise BundleError(f"{path} was changed after export (its content hash does not match); re-export it")
    exported_schema = data.get("schema_version")
    try:
        data = _migrate(data, path)
        named = _check_named_files(root, data)
        if check_files:
            words = ("bundle", "export", "re-export", "export")
            check_hashes(root, data["files"], root / MANIFEST_FILE, BundleError, words)
        knn = data["knn"]
        max_batch = _bounded_int(data["input"]["max_batch"], "input.max_batch", MAX_BATCH_LIMIT)
        image_size = _bounded_int(data["input"]["size"], "input.size", MAX_INPUT_SIZE, lower=8)
        if knn not in KNN_MODES:
            raise BundleError(f"{path}: unknown knn mode {knn!r}; expected one of {', '.join(KNN_MODES)}")
        graphs = {p: _graph_spec(p, g, knn, max_batch) for p, g in data["graphs"].items()}
        calibration = {p: _calibration(p, c) for p, c in data["calibration"].items()}
        coreset = data.get("coreset")
        if coreset is not None and not isinstance(coreset, dict):
            raise ValueError(f"coreset must be an object, got {coreset!r}")
        manifest = Manifest(
            root=root,
            schema_version=data["schema_version"],
            toolkit_version=str(data["toolkit_version"]),
            category=str(data["category"]),
            preset=str(data["preset"]),
            image_size=image_size,
            max_batch=max_batch,
            knn=knn,
            graphs=graphs,
            calibration=calibration,
            coreset=coreset,
            engines=dict(data.get("engines", {})),
            raw=data,
        )
        _check_consistency(manifest, path)
        _check_selftest(manifest, path, exported_schema, named, require_selftest)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BundleError(f"{path} is malformed ({type(exc).__name__}: {exc}); re-export the bundle") from exc
    return manifest


def _named_files(data: dict[str, Any]) -> dict[str, Any]:
    """Every file the manifest refers to, by where it is named (graphs, coreset, self-test, engines)."""
    named: dict[str, Any] = {f"graphs.{p}.file": g["file"] for p, g in data["graphs"].items()}
    coreset = data.get("coreset") or {}
    named.update({f"coreset.files[{i}]": name for i, name in enumerate(coreset.get("files", []))})
    entry = data.get("selftest") or {}
    for key in ("pixels", "reference_maps", "legacy_file"):
        if key in entry:
            named[f"selftest.{key}"] = entry[key]
    named.update({f"engines.{p}.file": e["file"] for p, e in (data.get("engines") or {}).items()})
    return named


def _check_named_files(root: Path, data: dict[str, Any]) -> dict[str, str]:
    """Each file the manifest names, and each hashed one, is a plain file name (no folder, `..` or absolute
    path), a regular file that does not resolve outside the bundle, and the named ones are hashed; returns
    the named ones."""
    files = data["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"files must map file names to SHA-256 digests, got {type(files).__name__}")
    named = _named_files(data)
    inside = root.resolve()
    for where, name in [*named.items(), *((f"files[{n!r}]", n) for n in files)]:
        if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name:
            raise BundleError(
                f"{root / MANIFEST_FILE}: {where} is {name!r}, not a plain file name inside the bundle (no "
                "folders, '..' or absolute paths); re-export the bundle"
            )
        if name not in files:
            raise BundleError(
                f"{root / MANIFEST_FILE}: {where} names {name}, which is not among the hashed files; "
                "re-export the bundle"
            )
        target = (root / name).resolve()
        if target.parent != inside:
            raise BundleError(
                f"{root / name} leads outside the bundle (to {target}); a bundle holds its own files, "
                "re-export it"
            )
    return named


def _finite_list(value: Any, name: str, length: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{name} must be a list of {length} numbers")
    if not all(not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) for v in value):
        raise ValueError(f"{name} must hold finite numbers only")
    return np.asarray(value, dtype=np.float64)


def _check_machine(machine: Any) -> None:
    """The export machine's facts are only reported (`platform_facts.describe`), but in their own shape:
    strings, a list of CPU feature names, backend name -> version."""
    features, backends = machine.get("cpu_features", []), machine.get("backends", {})
    if not (
        isinstance(features, list)
        and all(isinstance(f, str) for f in features)
        and isinstance(backends, dict)
        and all(isinstance(v, str) for v in backends.values())
        and all(isinstance(machine.get(k, ""), str) for k in ("machine", "cpu"))
    ):
        raise ValueError("selftest.machine must hold strings, a list of cpu_features, backend versions")


def _number(value: Any, name: str, optional: bool = False) -> float | None:
    """A finite JSON number >= 0 (not a bool), or None where `optional`, else ValueError."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_selftest(
    manifest: Manifest, path: Path, exported_schema: int, named: dict[str, str], required: bool
) -> None:
    """From schema 2 on: a self-test for every graph. Every budget at most what the export's measurement
    allows (`selftest.budget_for` of the error recomputed from the stored scores and FP32 reference; the
    verdict allowance from the flips they give), so none can be raised at will. Schema 1 bundles keep
    loading without one, after a warning."""
    entry = manifest.raw.get("selftest")
    older = exported_schema < SELFTEST_REQUIRED_FROM
    if not entry:
        if required and not older:
            raise BundleError(
                f"{path} has no selftest section, which schema {manifest.schema_version} requires (deleted "
                "after export?); re-export the bundle"
            )
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("precisions"), dict):
        raise ValueError("selftest must be an object with precisions")
    images = _bounded_int(entry["images"], "selftest.images", MAX_GOLDEN_IMAGES)
    _bounded_int(entry.get("digest_grid", selftest.DIGEST_GRID), "selftest.digest_grid", 64)
    _check_machine(entry.get("machine", {}))
    missing = set(manifest.graphs) - set(entry["precisions"])
    if missing and not older:
        raise BundleError(f"{path}: no self-test for {', '.join(sorted(missing))}; re-export the bundle")
    if entry.get("reference") is None:
        raise BundleError(f"{path}: the selftest section lacks its FP32 reference scores; re-export")
    reference = _finite_list(entry["reference"], "selftest.reference", images)
    reference_threshold = entry.get("reference_threshold")
    if reference_threshold is not None and not (
        isinstance(reference_threshold, int | float) and math.isfinite(reference_threshold)
    ):
        raise ValueError(f"selftest.reference_threshold must be a finite number, got {reference_threshold!r}")
    for precision, expected in entry["precisions"].items():
        name = f"selftest.precisions.{precision}"
        if precision not in manifest.graphs or not isinstance(expected, dict):
            raise ValueError(f"{name}: no such graph, or not an object")
        scores = _finite_list(expected["scores"], f"{name}.scores", images)
        budget = _number(expected["budget"], f"{name}.budget")
        measured = selftest.score_error(scores, reference)
        allowed = {"budget": (budget, selftest.budget_for(precision, measured))}
        map_error = _number(expected.get("map_error"), f"{name}.map_error", optional=True)
        map_budget = _number(expected.get("map_budget"), f"{name}.map_budget", optional=True)
        if map_budget is not None:
            allowed["map budget"] = (map_budget, selftest.budget_for(precision, map_error or 0.0))
        if reference_threshold is not None:
            max_flips = _bounded_int(expected["max_flips"], f"{name}.max_flips", images, lower=0)
            threshold = manifest.calibration[precision].threshold
            flips = selftest.verdict_flips(scores, threshold, reference, reference_threshold)
            allowed["verdict allowance"] = (max_flips, flips + selftest.FLIP_ALLOWANCE)
        for what, (value, bound) in allowed.items():
            if not value <= bound * (1 + 1e-9):
                raise BundleError(
                    f"{path}: the {precision} self-test {what} {value:.4g} is above what the export "
                    f"measured allows ({bound:.4g}); the manifest was edited, re-export the bundle"
                )


def _check_consistency(manifest: Manifest, path: Path) -> None:
    unknown = set(manifest.graphs) - set(PRECISIONS)
    if unknown or not manifest.graphs:
        raise BundleError(
            f"{path}: graphs must be some of {', '.join(PRECISIONS)}, got {sorted(manifest.graphs)}"
        )
    missing = set(manifest.graphs) - set(manifest.calibration)
    if missing:
        raise BundleError(f"{path}: no calibration for precision(s) {', '.join(sorted(missing))}; re-export")
    size = manifest.image_size
    for spec in manifest.graphs.values():
        if spec.input_shape != (3, size, size):
            raise BundleError(
                f"{path}: {spec.file} takes input {list(spec.input_shape)}, but input.size is {size} "
                f"(expected [3, {size}, {size}]); re-export the bundle"
            )
    if manifest.coreset is not None and manifest.coreset.get("search", "exact") not in ("exact", "int8"):
        raise ValueError(f"coreset.search must be exact or int8, got {manifest.coreset['search']!r}")
    if manifest.knn == "faiss":
        if manifest.coreset is None:
            raise BundleError(f"{path}: a knn 'faiss' bundle needs a coreset entry; re-export")
        _bounded_int(manifest.coreset["count"], "coreset.count", 1 << 31)
        _bounded_int(manifest.coreset["dim"], "coreset.dim", 1 << 16)
        if CORESET_FAISS not in manifest.coreset.get("files", []):
            raise BundleError(f"{path}: the coreset entry does not list {CORESET_FAISS}; re-export")
        for spec in manifest.graphs.values():
            dim = spec.outputs["patch_features"][0]
            if dim != manifest.coreset["dim"]:
                raise BundleError(
                    f"{path}: {spec.file} yields {dim}-dim patch features but the coreset has dimension "
                    f"{manifest.coreset['dim']}; the files come from different exports, re-export the bundle"
                )


def sign_bundle(bundle: Path, key: Path) -> dict[str, str]:
    """`npgmf-edge sign BUNDLE --key KEY`: check the bundle (every hash) and sign the manifest bytes that
    were checked; returns the signature entry. A damaged bundle is refused, not signed."""
    private_key = load_private_key(key)
    path = Path(bundle) / MANIFEST_FILE
    before = path.read_bytes() if path.is_file() else b""
    read_manifest(Path(bundle))
    if path.read_bytes() != before:
        raise BundleError(f"{path} changed while it was being checked; sign it again")
    return sign_manifest_bytes(Path(bundle), before, private_key)
