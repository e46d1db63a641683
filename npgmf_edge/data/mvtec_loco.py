"""MVTec LOCO AD reader and the `defects_config.json` format.

Layout: `<category>/{train/good, validation/good, test/<type>, ground_truth/<type>/<id>/000.png, 001.png..,
defects_config.json}`. Each ground-truth PNG holds one defect drawn with its type's `pixel_value`; an image
with several defects has several PNGs. The layout is checked here; mask values are checked when the masks
are read (`image_io.read_defect_regions`), so listing a dataset stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npgmf_edge.data.dataset import GOOD, AnomalyDataset, DefectSpec
from npgmf_edge.data.layout import defect_test_samples, good_samples, require_dir
from npgmf_edge.errors import DatasetError

LAYOUT = (
    "an MVTec LOCO AD category needs train/good, validation/good, test/<defect type>/, "
    "ground_truth/<defect type>/<id>/ and defects_config.json"
)
DEFECTS_CONFIG = "defects_config.json"
DEFECT_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


def read_mvtec_loco(category_dir: Path) -> AnomalyDataset:
    """List an MVTec LOCO AD category; every anomalous test image needs a ground-truth folder of PNGs.
    Without train/ and validation/ it is a test-only copy (as the official script takes): evaluated only."""
    defects_config = read_defects_config(category_dir / DEFECTS_CONFIG)
    if is_test_only(category_dir):
        train, validation = [], []
    else:
        train = good_samples(require_dir(category_dir / "train" / GOOD, LAYOUT), "train")
        validation = good_samples(require_dir(category_dir / "validation" / GOOD, LAYOUT), "validation")
    test = defect_test_samples(category_dir, LAYOUT, _masks)
    return AnomalyDataset(
        category_dir, "mvtec_loco", category_dir.name, train, validation, test, defects_config
    )


def is_test_only(category_dir: Path) -> bool:
    return not (category_dir / "train").exists() and not (category_dir / "validation").exists()


def _masks(image: Path, truth_dir: Path) -> tuple[Path, ...]:
    """Every PNG of `ground_truth/<defect type>/<id>/`, one per defect, sorted by name."""
    masks_dir = truth_dir / image.stem
    masks = tuple(sorted(masks_dir.glob("*.png"))) if masks_dir.is_dir() else ()
    if not masks:
        raise DatasetError(
            f"missing ground truth for test image {image}: expected one PNG per defect in "
            f"{masks_dir}/ (000.png, 001.png, ...)"
        )
    return masks


def read_defects_config(path: Path) -> list[DefectSpec]:
    """Parse and check `defects_config.json` (a JSON list of objects with DEFECT_KEYS)."""
    if not path.is_file():
        raise DatasetError(f"missing {path}: {LAYOUT}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise DatasetError(
            f"{path} must hold a non-empty JSON list of objects with keys {', '.join(DEFECT_KEYS)}"
        )
    specs = [_defect_spec(entry, index, path) for index, entry in enumerate(entries)]
    names_by_value: dict[int, str] = {}
    for spec in specs:
        if spec.pixel_value in names_by_value:
            raise DatasetError(
                f"{path}: pixel_value {spec.pixel_value} is used by both {names_by_value[spec.pixel_value]!r}"
                f" and {spec.defect_name!r}; each defect type needs its own value"
            )
        names_by_value[spec.pixel_value] = spec.defect_name
    return specs


def _defect_spec(entry: dict[str, Any], index: int, path: Path) -> DefectSpec:
    """One checked entry; JSON booleans are not accepted as numbers (Python's bool is an int)."""
    missing = [key for key in DEFECT_KEYS if key not in entry]
    if missing:
        raise DatasetError(
            f"{path}: entry {index} lacks {', '.join(missing)}; each entry needs {', '.join(DEFECT_KEYS)}"
        )
    name, value, threshold, relative = (entry[key] for key in DEFECT_KEYS)
    where = f"{path}: entry {index} ({name!r})"
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{path}: entry {index} has defect_name {name!r}; use a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise DatasetError(f"{where} has pixel_value {value!r}; use an integer from 1 to 255")
    if not isinstance(relative, bool):
        raise DatasetError(f"{where} has relative_saturation {relative!r}; use true or false")
    is_number = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    if not is_number or threshold <= 0 or (relative and threshold > 1):
        raise DatasetError(
            f"{where} has saturation_threshold {threshold!r}; use a fraction in (0, 1] when "
            "relative_saturation is true, else a pixel count above 0"
        )
    return DefectSpec(name, value, float(threshold), relative)


def write_defects_config(path: Path, specs: Sequence[DefectSpec]) -> None:
    """Write `specs` in the official format; absolute thresholds as whole pixel counts, like the originals."""
    entries = [
        {
            "defect_name": spec.defect_name,
            "pixel_value": spec.pixel_value,
            "saturation_threshold": _json_threshold(spec),
            "relative_saturation": spec.relative_saturation,
        }
        for spec in specs
    ]
    path.write_text(json.dumps(entries, indent=4) + "\n")


def _json_threshold(spec: DefectSpec) -> float | int:
    return spec.saturation_threshold if spec.relative_saturation else int(spec.saturation_threshold)
