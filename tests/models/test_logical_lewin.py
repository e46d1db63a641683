"""LeWin blocks: static window partitioning, shifted-window mask, relative position bias, shape checks."""

import pytest
import torch

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.logical.lewin import (
    MASK_VALUE,
    LeFF,
    LeWinBlock,
    LeWinStage,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def test_window_partition_and_reverse_are_inverse() -> None:
    x = torch.randn(2, 8, 8, 5)
    windows = window_partition(x, 4, 8, 8)
    assert windows.shape == (2 * 4, 16, 5)
    assert torch.equal(windows[0], x[0, :4, :4].reshape(16, 5))  # first window = top-left tile
    assert torch.equal(window_reverse(windows, 4, 8, 8), x)


def test_relative_position_index_covers_the_bias_table() -> None:
    index = relative_position_index(4)
    assert index.shape == (16, 16)
    assert index.min() == 0 and index.max() == (2 * 4 - 1) ** 2 - 1
    assert (index.diagonal() == index[0, 0]).all()  # zero offset -> one shared entry


def test_shifted_window_mask_separates_regions_the_roll_joined() -> None:
    mask = shifted_window_mask(8, 8, window=4, shift=2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}
    assert (mask[3] == MASK_VALUE).any()  # the bottom-right window mixes four regions


def test_unshifted_attention_does_not_cross_window_borders() -> None:
    torch.manual_seed(0)
    block = LeWinBlock(8, resolution=8, heads=2, window=4, shift=0, mlp_ratio=2.0).eval()
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[0, 6, 6] += 5.0  # change one token in the bottom-right window
    diff = (block(x) - block(y)).abs().sum(-1)[0]
    assert diff[:4, :4].max() == 0  # top-left window untouched (LeFF's 3x3 conv reaches 1 token only)
    assert diff[4:, 4:].max() > 0


def test_window_attention_and_leff_keep_shapes() -> None:
    attn = WindowAttention(16, heads=4, window=4)
    assert attn(torch.randn(3, 16, 16), None).shape == (3, 16, 16)
    assert LeFF(16, 32)(torch.randn(2, 4, 4, 16)).shape == (2, 4, 4, 16)


def test_stage_alternates_plain_and_shifted_windows() -> None:
    stage = LeWinStage(16, resolution=8, depth=3, heads=2, window_size=4)
    assert [b.shift for b in stage.blocks] == [0, 2, 0]
    assert stage(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


def test_grid_of_one_window_is_never_shifted() -> None:
    stage = LeWinStage(16, resolution=4, depth=2, heads=2, window_size=4)
    assert [b.shift for b in stage.blocks] == [0, 0]


def test_grid_not_divisible_by_window_names_stage_size_and_window() -> None:
    with pytest.raises(ConfigError, match=r"decoder stage 3: its 6x6 grid is not divisible by window_size 4"):
        LeWinStage(16, resolution=6, depth=1, heads=2, window_size=4, name="decoder stage 3")


def test_channels_not_divisible_by_heads_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be split into lewin_heads=3"):
        LeWinStage(16, resolution=8, depth=1, heads=3, window_size=4)
