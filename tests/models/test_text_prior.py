"""Text prior: CLIP text embedding from a local file / explicit random init, and its broadcast adapter."""

import logging
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from npgmf_edge.errors import WeightsError
from npgmf_edge.models.text_prior import TextPrior, compute_text_embedding

MODEL = "ViT-B-32"
PROMPT = "breakfast tray"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A randomly initialised open_clip model saved as a local checkpoint, and its prompt embedding."""
    torch.manual_seed(7)
    model = open_clip.create_model(MODEL, pretrained=None).eval()
    with torch.no_grad():
        expected = F.normalize(model.encode_text(open_clip.get_tokenizer(MODEL)([PROMPT]))[0], dim=0)
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, expected


def test_local_clip_file_gives_the_saved_models_embedding(clip_file) -> None:
    path, expected = clip_file
    embedding = compute_text_embedding(PROMPT, MODEL, weights=path)
    assert embedding.shape == (512,) and embedding.dtype == torch.float32
    assert torch.equal(embedding, expected)
    assert torch.isclose(embedding.norm(), torch.tensor(1.0))


def test_explicit_random_clip_warns_and_is_seeded(clip_file, caplog: pytest.LogCaptureFixture) -> None:
    _, expected = clip_file  # made by torch.manual_seed(7) + a random open_clip model
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="npgmf_edge.models.text_prior"):
        embedding = compute_text_embedding(PROMPT, MODEL, pretrained=False, seed=7)
    assert "random initialisation chosen explicitly" in caplog.text
    assert torch.equal(embedding, expected)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone


def test_missing_or_foreign_clip_file_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"CLIP weights file not found: .*absent\.safetensors"):
        compute_text_embedding(PROMPT, MODEL, weights=tmp_path / "absent.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(WeightsError, match=r"cannot load CLIP ViT-B-32 weights from .*foreign"):
        compute_text_embedding(PROMPT, MODEL, weights=foreign)


def test_unknown_hub_tag_is_a_weights_error_with_the_offline_hint() -> None:
    with pytest.raises(WeightsError, match="--clip-weights PATH"):
        compute_text_embedding(PROMPT, MODEL, "no-such-tag", pretrained=True)


def test_text_prior_broadcasts_one_trainable_context_over_the_grid() -> None:
    prior = TextPrior(torch.randn(512), out_dim=16)
    out = prior(torch.zeros(3, 64, 8, 4))
    assert out.shape == (3, 16, 8, 4)
    assert torch.equal(out[1, :, 5, 2], out[0, :, 0, 0])  # the same context everywhere
    assert "embedding" in prior.state_dict()  # stored with the model: no CLIP after training
    assert [name for name, _ in prior.named_parameters()] == ["fc.weight", "fc.bias"]


def test_text_prior_needs_a_1d_embedding() -> None:
    with pytest.raises(ValueError, match=r"must be 1-D"):
        TextPrior(torch.randn(1, 512), out_dim=8)
