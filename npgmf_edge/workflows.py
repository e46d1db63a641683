"""What the CLI verbs do, as library functions a user can also call from Python.

`predict_images` and `evaluate_run` take a run directory (the torch-side `RunDetector`) or a bundle (the
torch-free `runtime.BundleDetector`), detected from the folder by `open_detector`; both write their
summaries last (and atomically), so an interrupted call never leaves a summary pointing at missing files.
`predict_images` checks its inputs before it creates its output folder, holds a lock in it while writing,
and works through the images a chunk at a time, so memory does not grow with their number.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.calibration.calibrate import CALIBRATION_FILE, PSEUDO_SAMPLE_FILE
from npgmf_edge.data import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    Sample,
    decode_inputs,
    read_image,
)
from npgmf_edge.errors import CheckpointError, ConfigError, DatasetError, OutputError
from npgmf_edge.fileio import atomic_write, output_lock, save_json
from npgmf_edge.inspection import Inspection, MapDetector
from npgmf_edge.preprocess import map_to_image_size
from npgmf_edge.progress import Reporter
from npgmf_edge.visualize import inspection_overlay, write_png

OVERLAYS_PER_TYPE = 6  # overlays written by `evaluate` for each test defect type
PREDICT_CHUNK = 8  # images decoded, inspected and drawn together by `predict`
PREDICTIONS_CSV, PREDICTIONS_JSON = "predictions.csv", "predictions.json"
CSV_FIELDS = ("image", "score", "threshold", "verdict", "precision", "overlay", "error")


def heat_range(threshold: float) -> tuple[float, float]:
    """Colour scale for fused maps: blue well below the verdict threshold, red well above it."""
    span = max(abs(threshold), 1e-6)
    return threshold - 0.5 * span, threshold + 0.5 * span


def _overlay(path: Path, image: np.ndarray, inspection: Inspection) -> Path:
    low, high = heat_range(inspection.threshold)
    write_png(path, inspection_overlay(image, inspection, low, high))
    return path


def _bundle_device(device: str) -> str:
    """The torch-free runtime's device: cuda needs onnxruntime's CUDA provider (onnxruntime-gpu); `auto`
    takes cuda when it is there, else cpu."""
    if device == "cpu":
        return device
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "--device cuda: onnxruntime here has no CUDA provider (install onnxruntime-gpu); "
            "use --device cpu or auto"
        )
    return "cuda" if has_cuda else "cpu"


def open_detector(
    model: Path,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    device: str = "cpu",
    precision: str | None = None,
    fallback: str | None = None,
    trust: Path | None = None,
) -> MapDetector:
    """A bundle (a folder with manifest.json: the runtime, no torch) or a run directory (torch), run on
    `device` ("auto", "cpu" or "cuda"); `precision` and `fallback` choose a bundle's graph, `trust` the
    keys its signature must be made with (a run directory is then refused: it cannot be signed)."""
    from npgmf_edge.runtime import BundleDetector, Inspector
    from npgmf_edge.runtime.manifest import MANIFEST_FILE

    model = Path(model)
    if (model / MANIFEST_FILE).is_file() or trust is not None:
        inspector = Inspector.open(
            model,
            max_pixels=max_pixels,
            device=_bundle_device(device),
            precision=precision,
            fallback=fallback,
            trust=trust,
        )
        return BundleDetector(inspector)
    from npgmf_edge.device import resolve_device  # imports torch: only for a run directory
    from npgmf_edge.rundir import CONFIG_FILE

    resolved = resolve_device(device)  # an impossible --device is the one line, whatever the folder holds
    if not (model / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"no {MANIFEST_FILE} in {model}, and no {CONFIG_FILE} either: it is neither a complete bundle "
            "(re-export it) nor a run directory from `npgmf-edge train`"
        )
    if precision is not None or fallback is not None:
        raise ConfigError(f"--precision and --fallback choose a bundle's graph; {model} is a run directory")
    from npgmf_edge.detector import RunDetector

    return RunDetector(model, max_pixels=max_pixels, device=resolved)


def expand_images(items: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as the image files inside them (recursively, sorted), and glob patterns."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            if not inside:
                raise DatasetError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        elif any(c in str(item) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not matches:
                raise DatasetError(f"pattern {item} matches no file")
            found.extend(matches)
        else:
            raise DatasetError(f"image {path} does not exist")
    return found


def overlay_names(images: Sequence[Path]) -> list[str]:
    """One overlay file name per input, from its path below the inputs' common folder (a/x.png and
    b/x.png give a__x_overlay.png and b__x_overlay.png); a name taken twice gets the input's index."""
    paths = [Path(p).absolute() for p in images]
    common = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    names: list[str] = []
    for index, path in enumerate(paths):
        stem = "__".join(path.relative_to(common).with_suffix("").parts)
        name = f"{stem}_overlay.png"
        names.append(f"{stem}_{index}_overlay.png" if name in names else name)
    return names


def _earlier_outputs(out: Path) -> set[str] | None:
    """Names of the files an earlier `predict` wrote into `out`: its summaries and the overlays its
    predictions.json lists (empty: no summary there); None when a predictions.json is there that is not
    one of ours."""
    summary = out / PREDICTIONS_JSON
    if not summary.is_file():
        return set()
    try:
        rows = json.loads(summary.read_text())["predictions"]
        return {PREDICTIONS_CSV, PREDICTIONS_JSON} | {
            Path(row["overlay"]).name for row in rows if row["overlay"]
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_out(out: Path, images: Sequence[Path]) -> set[str]:
    """Refuse an --out that `predict` could not write without replacing a file it did not write: one
    holding an input image, or a file named like an overlay or summary it would write that no earlier
    `predict` wrote there (docs/RELIABILITY.md). Returns the names an earlier `predict` wrote (replaced)."""
    if not out.is_dir():
        return set()
    root = out.resolve()
    inside = next((image for image in images if root in Path(image).resolve().parents), None)
    if inside is not None:
        raise OutputError(
            f"--out {out} holds the input image {inside}; choose an --out outside the inputs "
            "(predict never writes among the images it reads)"
        )
    earlier = _earlier_outputs(out) or set()
    for name in (*overlay_names(images), PREDICTIONS_CSV, PREDICTIONS_JSON):
        if os.path.lexists(out / name) and name not in earlier:
            raise OutputError(
                f"--out {out} already holds {out / name}, which no earlier predict wrote; choose another "
                "--out (predict never replaces a file it did not write)"
            )
    return earlier


def _clear_previous(out: Path, earlier: set[str]) -> int:
    """Remove the files an earlier `predict` wrote into `out` (so no overlay is left that the new summary
    does not list); returns how many overlays went."""
    removed = 0
    for name in earlier - {PREDICTIONS_CSV, PREDICTIONS_JSON}:
        if (out / name).is_file():
            (out / name).unlink()
            removed += 1
    for name in (PREDICTIONS_CSV, PREDICTIONS_JSON):
        (out / name).unlink(missing_ok=True)
    return removed


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


@dataclass
class PredictionSummary:
    """What `predict_images` did: counts, the output folder, which bundle graph answered (`answered_by`,
    empty for a run) and one row per image (as in predictions.csv); `to_json` is predictions.json."""

    images: int
    anomalous: int
    errors: int
    unwritten_overlays: int
    out: str
    reused_out: bool
    answered_by: dict[str, str | None]
    predictions: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k not in ("answered_by", "predictions")}
        return {**fields, **self.answered_by, "predictions": self.predictions}


def predict_images(
    model: Path,
    images: Sequence[Path],
    out: Path,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    precision: str | None = None,
    fallback: str | None = None,
    trust: Path | None = None,
) -> PredictionSummary:
    """Score, verdict and overlay PNG per image, plus `predictions.csv` and `predictions.json` in `out`,
    from a run directory or a bundle (`precision`, or `fallback` where it fails its self-test). An image
    without a verdict gets verdict "error" and the reason; an overlay that cannot be written leaves its
    row's verdict and says why. `out` is checked first (`check_out`), created once the model opened, and an
    earlier prediction's overlays in it are removed (`log` says so)."""
    images = [Path(p) for p in images]
    out = Path(out)
    if not images:
        raise DatasetError("no images to inspect")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose a folder for the predictions")
    check_out(out, images)  # before the model opens: a refused --out costs nothing
    detector = open_detector(
        model, max_pixels=max_pixels, device=device, precision=precision, fallback=fallback, trust=trust
    )
    if detector.calibration is None:
        raise CheckpointError(
            f"{model} is not calibrated ({CALIBRATION_FILE} missing): train with --branch all"
        )
    threshold = detector.calibration.threshold
    reused = out.is_dir()
    rows: list[dict[str, Any]] = []
    unwritten: list[str] = []
    with output_lock(out):
        removed = _clear_previous(out, check_out(out, images))  # again under the lock
        if reused and log is not None:
            log(
                f"writing into the existing folder {out}"
                + (f"; removed {removed} earlier overlays" if removed else "")
            )
        names = overlay_names(images)
        with Reporter("inspecting", len(images), unit="images", enabled=True) as report:
            for start in range(0, len(images), PREDICT_CHUNK):
                chunk = images[start : start + PREDICT_CHUNK]
                decoded = decode_inputs(chunk, max_pixels)
                good = [image for image in decoded if not isinstance(image, str)]
                inspected = iter(zip(good, detector.inspect(good) if good else [], strict=True))
                for offset, (path, item) in enumerate(zip(chunk, decoded, strict=True)):
                    if isinstance(item, str):
                        rows.append(_row(path, Inspection.failed(threshold, item), ""))
                        continue
                    image, inspection = next(inspected)
                    overlay, problem = "", None
                    if inspection.problem is None:
                        overlay, problem = _written_overlay(out / names[start + offset], image, inspection)
                    if problem is not None:
                        unwritten.append(problem)
                    rows.append(_row(path, inspection, overlay, problem))
                report.advance(len(chunk))
        if unwritten and log is not None:
            log(f"{len(unwritten)} overlays not written ({unwritten[0]}); the summary has every verdict")
        _write_csv(rows, out / PREDICTIONS_CSV)
        summary = PredictionSummary(
            images=len(rows),
            anomalous=sum(r["verdict"] == "anomalous" for r in rows),
            errors=sum(r["verdict"] == "error" for r in rows),
            unwritten_overlays=len(unwritten),
            out=str(out),
            reused_out=reused,
            answered_by=detector.answered_by(),
            predictions=rows,
        )
        save_json(summary.to_json(), out / PREDICTIONS_JSON)
    return summary


def _written_overlay(path: Path, image: np.ndarray, inspection: Inspection) -> tuple[str, str | None]:
    """(the overlay's path, None), or ("", why not) when it cannot be written (a full disk, a read-only
    folder): the verdict stands without its picture, and the write leaves no partial file."""
    try:
        return str(_overlay(path, image, inspection)), None
    except OSError as exc:
        return "", f"overlay not written: {exc.strerror or exc} ({path})"


def _row(image: Path, inspection: Inspection, overlay: str, problem: str | None = None) -> dict[str, Any]:
    return {
        "image": str(image),
        "score": round(inspection.score, 6) if inspection.problem is None else None,
        "threshold": round(inspection.threshold, 6),
        "verdict": inspection.verdict,
        "precision": inspection.precision or "",
        "overlay": overlay,
        "error": inspection.problem or problem or "",
    }


def evaluate_run(
    run_dir: Path, dataset: AnomalyDataset, out: Path, maps_dir: Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Per-branch metrics on `dataset.test` (maps computed on `device`), metrics JSON, an HTML report and
    overlays in `out`; with `maps_dir`, the scored maps as TIFF in the official MVTec LOCO layout."""
    from npgmf_edge.evaluation import (
        evaluate_maps,
        format_fusion_table,
        format_results_table,
        write_maps_tiff,
    )
    from npgmf_edge.report import (
        plot_roc_curves,
        plot_score_histogram,
        plot_training_curve,
        write_html_report,
    )
    from npgmf_edge.training.early_stopping import read_training_curve

    detector = open_detector(run_dir, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = dataset.test
    branch_maps, sizes = detector.maps_and_sizes([s.image_path for s in samples], progress=True)
    scored, scores = detector.scored_maps(branch_maps)
    primary = _primary_branch(scored)

    results: dict[str, dict] = {}
    for branch, maps in scored.items():
        full_res = {
            s.image_path: map_to_image_size(m, h, w)
            for s, m, (h, w) in zip(samples, maps, sizes, strict=True)
        }
        image_score = {s.image_path: float(v) for s, v in zip(samples, scores[branch], strict=True)}
        results[branch] = evaluate_maps(dataset, full_res, image_scores=image_score)
        if maps_dir is not None and branch == primary:
            for sample in samples:
                write_maps_tiff(maps_dir, dataset.category, sample, full_res[sample.image_path])

    labels = np.array([s.label for s in samples])
    threshold = detector.calibration.threshold if detector.calibration is not None else None
    figures = [plot_roc_curves(labels, scores, out / "roc.png")]
    for branch, branch_scores in scores.items():
        figures.append(
            plot_score_histogram(
                labels,
                branch_scores,
                threshold if branch == "fused" else None,
                f"{branch} image scores",
                out / f"histogram_{branch}.png",
            )
        )
    overlays = _evaluation_overlays(
        samples, scored[primary], scores[primary], sizes, out / "overlays", threshold
    )
    curve = read_training_curve(run_dir)  # None for a bundle or a run without a logical branch
    curve_png = plot_training_curve(curve, out / "training_curve.png") if curve is not None else None
    table = format_results_table(results)
    if detector.calibration is not None:
        table += "\n\n" + format_fusion_table(detector.calibration)
    pseudo_sample = Path(run_dir) / PSEUDO_SAMPLE_FILE  # a run's; a bundle does not carry the picture
    if pseudo_sample.is_file():
        figures.append(Path(shutil.copyfile(pseudo_sample, out / PSEUDO_SAMPLE_FILE)))
    save_json(results, out / "metrics.json")
    report = write_html_report(
        out / "report.html",
        f"npgmf-edge evaluation: {dataset.category}",
        table,
        figures,
        overlays,
        results,
        training_curve=curve_png,
    )
    return {"table": table, "metrics": str(out / "metrics.json"), "report": str(report), "results": results}


def _primary_branch(scored: dict[str, np.ndarray]) -> str:
    """The map a user acts on: the fused one when the run is calibrated, else the single trained branch."""
    return "fused" if "fused" in scored else next(iter(scored))


def _evaluation_overlays(
    samples: Sequence[Sample],
    maps: np.ndarray,
    scores: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    out: Path,
    threshold: float | None,
) -> list[Path]:
    """A few overlays per defect type, so a person can see whether the heat sits on the defects."""
    per_type: dict[str, int] = {}
    paths = []
    cut = threshold if threshold is not None else float(np.median(scores))
    for sample, anomaly_map, score, (h, w) in zip(samples, maps, scores, sizes, strict=True):
        if per_type.get(sample.defect_type, 0) >= OVERLAYS_PER_TYPE:
            continue
        per_type[sample.defect_type] = per_type.get(sample.defect_type, 0) + 1
        inspection = Inspection(float(score), cut, map_to_image_size(anomaly_map, h, w))
        name = f"{sample.defect_type}_{sample.image_id}.png"
        paths.append(_overlay(out / name, read_image(sample.image_path), inspection))
    return paths


def run_demo(
    out: Path, seed: int = 0, epochs: int | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Make synthetic data, train the tiny preset (random CLIP, chosen explicitly: none offline), evaluate,
    predict, export an fp32 + int8 bundle, verify, predict with it and bench it against torch. A refused
    INT8 graph is dropped loudly (`dropped_precisions`); `verify_passed` False: a precision fails verify."""
    from npgmf_edge.bench import BenchOptions, format_bench_table, run_bench
    from npgmf_edge.config import apply_overrides, get_preset
    from npgmf_edge.data import load_dataset
    from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
    from npgmf_edge.export.bundle import ExportOptions, Int8RefusedError, export_bundle
    from npgmf_edge.export.verify import format_verify_table, verify_bundle
    from npgmf_edge.training.run import train_run

    out = Path(out)
    data_dir = out / "data"
    generate_dataset(data_dir, SyntheticConfig(seed=seed), overwrite=True)
    dataset = load_dataset(data_dir)

    cfg = get_preset("tiny")
    apply_overrides(cfg, random_clip=True, seed=seed, epochs=epochs)
    run_dir = out / "run"
    train_run(dataset, cfg, run_dir, branch="all")
    evaluation = evaluate_run(run_dir, dataset, out / "evaluation")

    examples = [s.image_path for s in dataset.test if s.label == 1][:4] + [
        s.image_path for s in dataset.test if s.label == 0
    ][:2]
    prediction = predict_images(run_dir, examples, out / "predictions")

    bundle = out / "bundle"
    dropped = {}
    try:
        export_bundle(run_dir, bundle, ExportOptions(precisions=("fp32", "int8")), log=log)
    except Int8RefusedError as exc:
        dropped["int8"] = str(exc)
        if log is not None:
            log(f"INT8 DROPPED from the demo bundle: {exc}")
        export_bundle(run_dir, bundle, ExportOptions(precisions=("fp32",)), log=log)
    verification = verify_bundle(bundle, run_dir, dataset)
    bundle_prediction = predict_images(bundle, examples, out / "bundle_predictions")
    bench = run_bench(bundle, BenchOptions(backends=("onnxruntime", "torch"), iters=10, run=run_dir), log=log)
    save_json(bench.to_json(), out / "bench.json")
    return {
        "table": evaluation["table"],
        "verify_table": format_verify_table(verification),
        "verify_passed": verification.passed,
        "dropped_precisions": dropped,
        "bench_table": format_bench_table(bench),
        "bundle_predictions": bundle_prediction.out,
        "data": str(data_dir),
        "run": str(run_dir),
        "report": evaluation["report"],
        "metrics": evaluation["metrics"],
        "predictions": prediction.out,
        "bundle": str(bundle),
    }
