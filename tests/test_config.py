"""Configs: presets are complete, survive a JSON round trip, and reject typos."""

from pathlib import Path

import pytest

from npgmf_edge.config import PRESETS, NpgmfConfig, get_preset
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
    with pytest.raises(ConfigError, match=f"cannot read config {bad}"):
        NpgmfConfig.load(bad)
