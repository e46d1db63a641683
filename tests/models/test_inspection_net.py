"""InspectionNet: one encoder pass feeds both branches, and it computes what each branch computes alone."""

import torch

from npgmf_edge.config import get_preset
from npgmf_edge.models.inspection_net import OUTPUT_NAMES, InspectionNet
from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet
from npgmf_edge.models.structural.torch_model import build_patch_extractor

SIZE = 64
CLIP_DIM = 512


def branches(share: bool):
    cfg = get_preset("tiny")
    cfg.image_size = SIZE
    cfg.weights.pretrained = False
    cfg.structural.share_logical_encoder = share
    embedding = torch.nn.functional.normalize(torch.randn(CLIP_DIM), dim=0)
    torch.manual_seed(0)
    logical = NpgmfLogicalNet(cfg.logical, SIZE, embedding, pretrained=False, weights=None, warn_random=False)
    torch.manual_seed(0)  # the same seed gives the structural extractor the same random encoder
    extractor = build_patch_extractor(cfg, weights_follow=True)
    return logical.eval(), extractor.eval()


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_shared_encoder_runs_once_per_batch_and_matches_both_branches_run_alone() -> None:
    logical, extractor = branches(share=True)
    pixels = torch.rand(3, 3, SIZE, SIZE) * 255
    with torch.no_grad():
        expected_map, expected_features = logical(pixels), extractor(pixels)  # two separate passes
    net = InspectionNet(logical, extractor, share_encoder=True)
    calls = count_calls(logical.encoder.body)
    with torch.no_grad():
        logical_map, features = net(pixels)
    assert calls[0] == 1
    assert net.output_names == OUTPUT_NAMES
    assert not any(name.startswith("structural.encoder") for name, _ in net.named_parameters())
    torch.testing.assert_close(logical_map, expected_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(features, expected_features, rtol=0, atol=1e-6)


def test_unshared_preset_holds_both_encoders_and_each_runs_once() -> None:
    logical, extractor = branches(share=False)
    net = InspectionNet(logical, extractor, share_encoder=False)
    logical_calls, structural_calls = count_calls(logical.encoder.body), count_calls(extractor.encoder.body)
    pixels = torch.rand(2, 3, SIZE, SIZE) * 255
    with torch.no_grad():
        logical_map, features = net(pixels)
        expected = extractor(pixels)
    assert (logical_calls[0], structural_calls[0]) == (1, 2)  # once in the net, once for `expected`
    assert logical_map.shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


def test_a_run_with_one_branch_yields_only_that_output() -> None:
    logical, extractor = branches(share=True)
    assert InspectionNet(None, extractor, share_encoder=True).output_names == ("patch_features",)
    assert InspectionNet(logical, None, share_encoder=True).output_names == ("logical_map",)
