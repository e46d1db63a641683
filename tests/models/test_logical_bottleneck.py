"""OCE bottleneck, residual blocks, decoder stages and the reconstruction head: shapes and checks."""

import pytest
import torch

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.logical.blocks import UpsampleBlock, make_block, make_stage
from npgmf_edge.models.logical.bottleneck import OCEBottleneck
from npgmf_edge.models.logical.decoder import DecoderStage, ReconstructionHead
from npgmf_edge.models.text_prior import TextPrior


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_blocks_keep_channels_and_halve_with_stride_two(kind: str) -> None:
    assert make_block(kind, 32, 64)(torch.zeros(1, 32, 8, 8)).shape == (1, 64, 8, 8)
    assert make_stage(kind, 32, 64, depth=2, stride=2)(torch.zeros(1, 32, 8, 8)).shape == (1, 64, 4, 4)


def test_unknown_block_type_and_zero_depth_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown decoder_block 'dense'"):
        make_block("dense", 8, 8)
    with pytest.raises(ConfigError, match="decoder_depth must be >= 1"):
        make_stage("basic", 8, 8, depth=0)


def test_upsample_block_doubles_the_grid() -> None:
    assert UpsampleBlock(16, 8)(torch.zeros(2, 16, 4, 4)).shape == (2, 8, 8, 8)


@pytest.mark.parametrize(
    ("channels", "size"),
    [([64, 128, 256], 128), ([256, 512, 1024], 64)],  # resnet18-like (tiny), resnet101-like (paper)
)
def test_oce_brings_all_levels_to_one_stride_32_embedding(channels: list[int], size: int) -> None:
    oce = OCEBottleneck(channels, [4, 8, 16], block="bottleneck" if channels[0] > 64 else "basic")
    feats = [torch.zeros(1, c, size // s, size // s) for c, s in zip(channels, [4, 8, 16], strict=True)]
    assert [len(a) for a in oce.align] == [2, 1, 0]  # two stride-2 convs for level 1, one for level 2
    assert oce(feats).shape == (1, 2 * channels[-1], size // 32, size // 32)
    assert oce.out_stride == 32 and oce.out_channels == 2 * channels[-1]


def test_oce_rejects_levels_that_do_not_double_their_stride() -> None:
    with pytest.raises(ConfigError, match=r"double their stride.*\[4, 16, 32\]"):
        OCEBottleneck([64, 128, 256], [4, 16, 32])


def test_decoder_stage_concatenates_text_and_codes_on_channels() -> None:
    stage = DecoderStage(
        64,
        32,
        extra_channels=8 + 4,
        resolution=8,
        block="basic",
        depth=1,
        lewin_depth=2,
        heads=2,
        window_size=4,
    )
    text = TextPrior(torch.randn(10), out_dim=8)
    out = stage(torch.zeros(2, 64, 4, 4), text, torch.zeros(2, 4, 8, 8))
    assert out.shape == (2, 32, 8, 8)
    assert stage.project.in_channels == 32 + 8 + 4


def test_reconstruction_head_returns_rgb_at_input_size() -> None:
    assert ReconstructionHead(64, stride=4)(torch.zeros(2, 64, 32, 32)).shape == (2, 3, 128, 128)
