"""Configs: presets are complete, survive a JSON round trip, and reject typos."""

import json
from pathlib import Path

import pytest

from npgmf_edge.config import OVERRIDABLE, PRESETS, NpgmfConfig, apply_overrides, get_preset
from npgmf_edge.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_json(name: str, tmp_path: Path) -> None:
    cfg = get_preset(name)
    cfg.save(tmp_path / "config.json")
    assert NpgmfConfig.load(tmp_path / "config.json") == cfg


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"^unknown preset 'huge'; choose one of: tiny, edge, paper$"):
        get_preset("huge")


def test_unknown_config_key_is_rejected_with_its_path() -> None:
    data = get_preset("tiny").to_dict()
    data["logical"]["codebok_size"] = 8
    with pytest.raises(ConfigError, match=r"^unknown key\(s\) in config.logical: codebok_size$"):
        NpgmfConfig.from_dict(data)


def test_unreadable_config_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"^cannot use config {bad}: Expecting property name"):
        NpgmfConfig.load(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_size": "128"}, r"config.image_size must be int, got '128'"),
        ({"train": {"epochs": 2.5}}, r"config.train.epochs must be int, got 2.5"),
        ({"fusion": {"weight_logical": None}}, r"config.fusion.weight_logical must be float, got None"),
        ({"train": []}, r"config.train must be a JSON object, got list"),
        ({"image_size": 100}, r"image size must be a positive multiple of 64 for the tiny preset"),
    ],
)
def test_damaged_config_file_is_one_error_naming_the_file_and_the_key(
    tmp_path: Path, change: dict, message: str
) -> None:
    data = get_preset("tiny").to_dict()
    for key, value in change.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"^cannot use config {path}: .*{message}"):
        NpgmfConfig.load(path)


@pytest.mark.parametrize(
    ("section", "name", "value", "message"),
    [
        ("train", "epochs", 0, "epochs must be >= 1, got 0"),
        ("train", "epochs", -1, "epochs must be >= 1, got -1"),
        ("train", "batch_size", 0, "batch size must be >= 1, got 0"),
        ("train", "lr", float("nan"), "learning rate must be a finite number > 0, got nan"),
        ("train", "validation_fraction", 1.0, r"train.validation_fraction must be in \(0, 1\), got 1.0"),
        ("structural", "coreset_ratio", 0.0, r"coreset ratio must be in \(0, 1\], got 0.0"),
        (
            "structural",
            "aggregation",
            "mean",
            r"structural\.aggregation must be one of reference, local_mean",
        ),
        ("fusion", "false_alarm_rate", 1.0, r"fusion.false_alarm_rate must be in \[0, 1\), got 1.0"),
        ("fusion", "weight_logical", float("inf"), "fusion.weight_logical must be a finite number >= 0"),
        (None, "image_size", 0, "image size must be a positive multiple of 64 for the tiny preset"),
        (None, "image_size", 96, "image size must be a positive multiple of 64"),
    ],
)
def test_every_out_of_range_number_is_refused_by_validate(section, name: str, value, message: str) -> None:
    cfg = get_preset("tiny")
    setattr(getattr(cfg, section) if section else cfg, name, value)
    with pytest.raises(ConfigError, match=f"^{message}"):
        cfg.validate()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_its_image_size_a_multiple_of_what_it_needs(name: str) -> None:
    cfg = get_preset(name)
    cfg.validate()
    assert cfg.image_multiple() == {"tiny": 64, "edge": 64, "paper": 128}[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_config_saved_before_the_aggregation_option_loads_as_the_reference(name: str, tmp_path: Path):
    """Runs written before `structural.aggregation` existed were built with PatchCore's reference
    aggregation, whatever their preset's default is now."""
    data = get_preset(name).to_dict()
    del data["structural"]["aggregation"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert NpgmfConfig.load(path).structural.aggregation == "reference"


def test_edge_pools_with_local_mean_and_the_others_with_the_reference() -> None:
    """docs/DESIGN.md "Structural branch": measured for edge (Lite2, 256 px) only."""
    aggregations = {name: get_preset(name).structural.aggregation for name in PRESETS}
    assert aggregations == {"tiny": "reference", "edge": "local_mean", "paper": "reference"}


def test_overrides_set_the_named_values_and_keep_the_rest_of_the_preset() -> None:
    cfg = get_preset("edge")
    apply_overrides(
        cfg, image_size=128, epochs=3, pretrained=False, prompt="a tray", aggregation="reference",
        mode="fixed", weight_logical=0.5, seed=None,
    )  # fmt: skip
    expected = get_preset("edge")
    expected.image_size, expected.train.epochs, expected.weights.pretrained = 128, 3, False
    expected.logical.prompt, expected.structural.aggregation = "a tray", "reference"
    expected.fusion.mode, expected.fusion.weight_logical = "fixed", 0.5
    assert cfg.to_dict() == expected.to_dict()


def test_every_override_names_an_attribute_of_its_section() -> None:
    """A misspelt field would otherwise set a new attribute that nothing reads."""
    cfg = get_preset("tiny")
    for name, section in OVERRIDABLE.items():
        assert hasattr(getattr(cfg, section) if section else cfg, name), name


def test_overrides_are_checked_before_any_work() -> None:
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        apply_overrides(get_preset("tiny"), epochs=0)
