"""Fixtures shared by every test package."""

from pathlib import Path

import pytest

from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset

# Small enough to generate in well under a second; every logical and structural defect type appears once.
SMALL_LOCO = SyntheticConfig(
    image_size=64, n_train=10, n_validation=4, n_test_good=4, n_logical=4, n_structural=3
)


@pytest.fixture(scope="session")
def loco_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The category folder of a small generated MVTec LOCO AD dataset (64 px; 10/4/4/4/3 images).

    Session-scoped and shared: tests must not modify it (copy it with shutil.copytree first).
    `load_dataset(loco_dataset_dir)` reads it.
    """
    out = tmp_path_factory.mktemp("loco") / "data"
    summary = generate_dataset(out, SMALL_LOCO)
    return Path(summary["dataset"])
