"""Normal codebooks: atrous block shapes, exact nearest-code quantisation, straight-through gradients,
VQ loss, and usage tracking / dead-code restarts."""

import torch
import torch.nn.functional as F

from npgmf_edge.models.logical.codebook import AtrousBlock, VectorQuantizer


def test_atrous_block_keeps_the_grid_and_maps_to_the_code_dim() -> None:
    block = AtrousBlock(64, 16, dilations=(1, 2, 4))
    assert len(block.branches) == 3
    assert block(torch.randn(2, 64, 12, 12)).shape == (2, 16, 12, 12)


def test_quantiser_returns_codebook_entries_exactly_and_the_nearest_ones() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=16, dim=8)
    z = torch.randn(3, 8, 5, 7)
    codes, indices = vq.quantize(z)
    assert codes.shape == z.shape and indices.shape == (3, 5, 7)
    flat = codes.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(flat, vq.codebook.detach()[indices.flatten()])  # bit-exact entries
    brute = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 8), vq.codebook.detach()).argmin(dim=1)
    assert torch.equal(indices.flatten(), brute)


def test_straight_through_gradient_reaches_the_atrous_block() -> None:
    torch.manual_seed(0)
    block, vq = AtrousBlock(8, 4, (1, 2)), VectorQuantizer(16, 4)
    codes, _, _ = vq(block(torch.randn(2, 8, 6, 6)))
    codes.pow(2).sum().backward()  # a decoder-side loss only, no VQ loss
    grads = [p.grad for p in block.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert vq.codebook.grad is None  # the codes themselves learn from the VQ loss only


def test_forward_values_equal_the_codes_while_gradients_pass_straight_through() -> None:
    vq = VectorQuantizer(16, 4)
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    st, _, _ = vq(z)
    codes, _ = vq.quantize(z)
    assert torch.allclose(st, codes)
    st.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_vq_loss_is_codebook_term_plus_beta_commitment() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    _, _, loss = vq(z)
    codes, _ = vq.quantize(z)
    expected = F.mse_loss(codes, z.detach()) + 0.25 * F.mse_loss(z, codes.detach())
    assert torch.allclose(loss, expected)
    loss.backward()
    assert vq.codebook.grad is not None and z.grad is not None


def test_usage_is_counted_in_training_only_and_dead_codes_are_visible() -> None:
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]))
    z = torch.tensor([[0.1, 9.0, 0.2], [0.0, 0.5, 9.5]]).view(1, 2, 1, 3)  # -> codes 0, 1, 2
    vq.eval()
    vq(z)
    assert vq.usage.sum() == 0
    vq.train()
    vq(z)
    assert vq.usage.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert vq.dead_codes().tolist() == [3]
    assert "usage" in vq.state_dict()  # saved with the weights, so dead codes show in a trained model


def test_restart_reseeds_only_dead_codes_from_the_given_latents() -> None:
    vq = VectorQuantizer(4, 2)
    vq.usage.copy_(torch.tensor([5.0, 0.0, 2.0, 0.0]))
    before = vq.codebook.detach().clone()
    z = torch.full((1, 2, 2, 2), 7.0)
    assert vq.restart_dead_codes(z, torch.Generator().manual_seed(0)) == 2
    assert torch.equal(vq.codebook[[0, 2]], before[[0, 2]])
    assert torch.equal(vq.codebook[[1, 3]], torch.full((2, 2), 7.0))


def test_init_from_latents_uses_distinct_latent_vectors() -> None:
    vq = VectorQuantizer(4, 3)
    z = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    vq.init_from(z, torch.Generator().manual_seed(0))
    pool = z.permute(0, 2, 3, 1).reshape(-1, 3)
    rows = {tuple(r.tolist()) for r in vq.codebook.detach()}
    assert len(rows) == 4 and rows <= {tuple(r.tolist()) for r in pool}
