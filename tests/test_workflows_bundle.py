"""predict and evaluate on a bundle (the torch-free runtime) give what they give on its run."""

import json
from pathlib import Path

import pytest

from npgmf_edge.errors import DatasetError
from npgmf_edge.workflows import evaluate_run, expand_images, predict_images


def test_evaluate_on_a_bundle_reproduces_the_runs_metrics(tiny_run, faiss_bundle, tmp_path: Path) -> None:
    run, dataset = tiny_run
    from_run = evaluate_run(run, dataset, tmp_path / "run_eval")["results"]
    from_bundle = evaluate_run(faiss_bundle, dataset, tmp_path / "bundle_eval")["results"]
    assert set(from_bundle) == {"structural", "logical", "fused"}
    for branch in from_bundle:
        a, b = from_run[branch]["classification"]["auc_roc"], from_bundle[branch]["classification"]["auc_roc"]
        assert b == pytest.approx(a, abs=1e-4), branch


def test_predict_on_a_bundle_gives_a_row_per_image_and_an_error_for_a_broken_one(
    tiny_run, faiss_bundle, tmp_path: Path
) -> None:
    _, dataset = tiny_run
    good = [s.image_path for s in dataset.test[:3]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[0].read_bytes()[:200])  # a truncated PNG
    summary = predict_images(faiss_bundle, [good[0], broken, *good[1:]], tmp_path / "pred")
    verdicts = [row["verdict"] for row in summary.predictions]
    assert verdicts[1] == "error" and "error" not in verdicts[:1] + verdicts[2:]
    assert str(broken) in summary.predictions[1]["error"]
    assert summary.errors == 1 and summary.images == 4
    assert all(Path(row["overlay"]).is_file() for row in summary.predictions if row["verdict"] != "error")
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert saved["errors"] == 1


def test_images_come_from_files_folders_and_patterns(tmp_path: Path) -> None:
    for name in ("a/1.png", "a/b/2.jpg", "a/notes.txt", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert expand_images([tmp_path / "a", tmp_path / "c.png"]) == [
        tmp_path / "a/1.png", tmp_path / "a/b/2.jpg", tmp_path / "c.png"
    ]  # fmt: skip
    assert expand_images([str(tmp_path / "**/*.jpg")]) == [tmp_path / "a/b/2.jpg"]
    with pytest.raises(DatasetError, match=r"pattern .*\*.bmp matches no file"):
        expand_images([str(tmp_path / "*.bmp")])
    with pytest.raises(DatasetError, match=f"image {tmp_path / 'nope.png'} does not exist"):
        expand_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"folder {tmp_path / 'empty'} holds no images"):
        expand_images([tmp_path / "empty"])
