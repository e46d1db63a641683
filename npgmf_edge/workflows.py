"""What the CLI verbs do, as library functions a user can also call from Python.

`predict_images` and `evaluate_run` take a run directory (the torch-side `RunDetector`) or a bundle (the
torch-free runtime, `BundleDetector`), detected from the folder; both write their summaries last, so an
interrupted call never leaves a summary pointing at missing files.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.data import IMAGE_EXTENSIONS, AnomalyDataset, Sample, read_image
from npgmf_edge.errors import ConfigError, DatasetError
from npgmf_edge.fileio import save_json
from npgmf_edge.inspection import Inspection
from npgmf_edge.postprocess import image_scores, smooth
from npgmf_edge.preprocess import map_to_image_size, to_model_input
from npgmf_edge.progress import Reporter
from npgmf_edge.visualize import inspection_overlay, write_png

OVERLAYS_PER_TYPE = 6  # overlays written by `evaluate` for each test defect type


def heat_range(threshold: float) -> tuple[float, float]:
    """Colour scale for fused maps: blue well below the verdict threshold, red well above it."""
    span = max(abs(threshold), 1e-6)
    return threshold - 0.5 * span, threshold + 0.5 * span


def _overlay(path: Path, image_path: Path, inspection: Inspection) -> Path:
    low, high = heat_range(inspection.threshold)
    write_png(path, inspection_overlay(read_image(image_path), inspection, low, high))
    return path


class BundleDetector:
    """A bundle behind the run detector's interface (`inspect`, `maps_and_sizes`, `scored_maps`), so
    `predict` and `evaluate` take either; it runs the torch-free `runtime.Inspector`."""

    def __init__(self, bundle: Path, threads: int | None = None, device: str = "cpu") -> None:
        from npgmf_edge.runtime import Inspector

        self.inspector = Inspector.open(Path(bundle), device=device, threads=threads)
        self.calibration = self.inspector.calibration

    def inspect(self, image_paths: Sequence[Path], progress: bool = False) -> list[Inspection]:
        step = self.inspector.manifest.max_batch
        results: list[Inspection] = []
        with Reporter("inspecting", len(image_paths), unit="images", enabled=progress) as report:
            for start in range(0, len(image_paths), step * 4):
                chunk = list(image_paths[start : start + step * 4])
                results.extend(self.inspector.inspect(chunk))
                report.advance(len(chunk))
        return results

    def maps_and_sizes(
        self, image_paths: Sequence[Path], progress: bool = False
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        """Raw branch maps and the fused map (N, S, S) at the model's input size, and original sizes."""
        step, size = self.inspector.manifest.max_batch, self.inspector.image_size
        out: dict[str, list[np.ndarray]] = {}
        sizes: list[tuple[int, int]] = []
        with Reporter("anomaly maps", len(image_paths), unit="images", enabled=progress) as report:
            for start in range(0, len(image_paths), step):
                images = [read_image(p) for p in image_paths[start : start + step]]
                sizes.extend(image.shape[:2] for image in images)
                maps = self.inspector.run(np.stack([to_model_input(image, size) for image in images]))
                for name in ("structural", "logical", "fused"):
                    out.setdefault(name, []).append(maps[name])
                report.advance(len(images))
        return {name: np.concatenate(maps) for name, maps in out.items()}, sizes

    def scored_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Smoothed branch maps beside the bundle's own fused map (what evaluation scores)."""
        sigma = self.calibration.gaussian_sigma
        return {"structural": smooth(maps["structural"], sigma), "logical": smooth(maps["logical"], sigma),
                "fused": maps["fused"]}  # fmt: skip


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


def open_detector(model: Path, device: str = "cpu"):
    """A bundle (a folder with manifest.json: the runtime, no torch) or a run directory (torch), run on
    `device` ("auto", "cpu" or "cuda")."""
    from npgmf_edge.runtime.manifest import MANIFEST_FILE

    model = Path(model)
    if (model / MANIFEST_FILE).is_file():
        return BundleDetector(model, device=_bundle_device(device))
    from npgmf_edge.detector import RunDetector

    return RunDetector(model, device=device)


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


def predict_images(model: Path, images: Sequence[Path], out: Path, device: str = "cpu") -> dict[str, Any]:
    """Score, verdict and overlay PNG per image, plus `predictions.csv` and `predictions.json` in `out`.

    `model` is a run directory or a bundle, run on `device`. An image without a verdict (unreadable, or a
    score that is not a finite number) gets a row with verdict "error" and the reason, and no overlay."""
    detector = open_detector(model, device)
    images = list(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inspections = detector.inspect(images, progress=True)
    rows = []
    for index, (image_path, inspection) in enumerate(zip(images, inspections, strict=True)):
        overlay = ""
        if inspection.problem is None:
            name = f"{index:04d}_{Path(image_path).stem}_overlay.png"
            overlay = str(_overlay(out / name, image_path, inspection))
        rows.append(
            {
                "image": str(image_path),
                "score": round(inspection.score, 6),
                "threshold": round(inspection.threshold, 6),
                "verdict": inspection.verdict,
                "overlay": overlay,
                "error": inspection.problem or "",
            }
        )
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "images": len(rows),
        "anomalous": sum(r["verdict"] == "anomalous" for r in rows),
        "errors": sum(r["verdict"] == "error" for r in rows),
        "out": str(out),
        "predictions": rows,
    }
    save_json(summary, out / "predictions.json")
    return summary


def evaluate_run(
    run_dir: Path, dataset: AnomalyDataset, out: Path, maps_dir: Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Per-branch metrics on `dataset.test` (maps computed on `device`), metrics JSON, an HTML report and
    overlays in `out`.

    With `maps_dir`, also writes each scored map (fused, or the only branch) as TIFF at original
    resolution in the official MVTec LOCO layout so other tools can cross-check.
    """
    from npgmf_edge.evaluation import evaluate_maps, format_results_table, write_maps_tiff
    from npgmf_edge.report import plot_roc_curves, plot_score_histogram, write_html_report

    detector = open_detector(run_dir, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = dataset.test
    branch_maps, sizes = detector.maps_and_sizes([s.image_path for s in samples], progress=True)
    scored = detector.scored_maps(branch_maps)
    primary = _primary_branch(scored)

    results: dict[str, dict] = {}
    for branch, maps in scored.items():
        full_res = {
            s.image_path: map_to_image_size(m, h, w)
            for s, m, (h, w) in zip(samples, maps, sizes, strict=True)
        }
        results[branch] = evaluate_maps(dataset, full_res)
        if maps_dir is not None and branch == primary:
            for sample in samples:
                write_maps_tiff(maps_dir, dataset.category, sample, full_res[sample.image_path])

    labels = np.array([s.label for s in samples])
    scores = {branch: image_scores(maps) for branch, maps in scored.items()}
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
    table = format_results_table(results)
    save_json(results, out / "metrics.json")
    report = write_html_report(
        out / "report.html", f"npgmf-edge evaluation: {dataset.category}", table, figures, overlays, results
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
        paths.append(_overlay(out / name, sample.image_path, inspection))
    return paths


def run_demo(
    out: Path, seed: int = 0, epochs: int | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Make synthetic data, train the tiny preset (random weights, chosen explicitly), evaluate, predict,
    export an fp32 + int8 bundle, verify it against the run, predict with it and bench it against torch."""
    from npgmf_edge.bench import BenchOptions, format_bench_table, run_bench
    from npgmf_edge.config import get_preset
    from npgmf_edge.data import load_dataset
    from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
    from npgmf_edge.export.bundle import ExportOptions, export_bundle
    from npgmf_edge.export.verify import format_verify_table, verify_bundle
    from npgmf_edge.training.run import train_run

    out = Path(out)
    data_dir = out / "data"
    generate_dataset(data_dir, SyntheticConfig(seed=seed), overwrite=True)
    dataset = load_dataset(data_dir)

    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.train.seed = seed
    if epochs is not None:
        cfg.train.epochs = epochs
    run_dir = out / "run"
    train_run(dataset, cfg, run_dir, branch="all")
    evaluation = evaluate_run(run_dir, dataset, out / "evaluation")

    examples = [s.image_path for s in dataset.test if s.label == 1][:4] + [
        s.image_path for s in dataset.test if s.label == 0
    ][:2]
    prediction = predict_images(run_dir, examples, out / "predictions")

    bundle = out / "bundle"
    export_bundle(run_dir, bundle, ExportOptions(precisions=("fp32", "int8")), log=log)
    verification = verify_bundle(bundle, run_dir, dataset)
    bundle_prediction = predict_images(bundle, examples, out / "bundle_predictions")
    bench = run_bench(bundle, BenchOptions(backends=("onnxruntime", "torch"), iters=10, run=run_dir), log=log)
    save_json(bench, out / "bench.json")
    return {
        "table": evaluation["table"],
        "verify_table": format_verify_table(verification),
        "bench_table": format_bench_table(bench),
        "bundle_predictions": bundle_prediction["out"],
        "data": str(data_dir),
        "run": str(run_dir),
        "report": evaluation["report"],
        "metrics": evaluation["metrics"],
        "predictions": prediction["out"],
        "bundle": str(bundle),
    }
