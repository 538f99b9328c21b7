"""flashlm.muon against reference computations: the Newton-Schulz map, Muon's update, and AdamW's for the rest."""
import torch

from flashlm.model import FlashLMModel
from flashlm.muon import MuonAdamW, muon_params, orthogonalize
from flashlm_core.config import model_preset


def test_newton_schulz_gives_the_gradients_singular_vectors_with_singular_values_near_one():
    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    o = orthogonalize(g, steps=5)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    so = torch.linalg.svdvals(o)
    assert o.shape == g.shape and o.dtype == g.dtype  # fp32 in, fp32 out: no bf16 round trip
    assert 0.5 < so.min() and so.max() < 1.5  # the quintic's band, not exactly 1 (by design)
    # the same singular vectors: o = U diag(s') V^T, so U^T o V is diagonal
    inner = u.T @ o @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-6)


def _model_with_grads(seed: int) -> FlashLMModel:
    torch.manual_seed(seed)
    model = FlashLMModel(model_preset("tiny"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def test_the_embedding_and_norms_take_adamw_and_match_torchs_adamw():
    ours, ref = _model_with_grads(1), _model_with_grads(1)
    matrices, rest = muon_params(ours)
    names = {id(p): n for n, p in ours.named_parameters()}
    assert all(names[id(p)].startswith("blocks.") or names[id(p)].startswith("fsp_proj") for p in matrices)
    assert any(names[id(p)] == "tok_emb.weight" for p in rest) and all(p.ndim == 1 or names[id(p)] == "tok_emb.weight" for p in rest)
    opt = MuonAdamW(ours, lr=1e-3, muon_lr=0.02, betas=(0.9, 0.95), weight_decay=0.1)
    _, ref_rest = muon_params(ref)
    ref_opt = torch.optim.AdamW(ref_rest, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for _ in range(3):
        opt.step()
        ref_opt.step()
    for a, b in zip(rest, ref_rest):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_muon_step_is_the_orthogonalized_nesterov_momentum_scaled_by_the_lr():
    model = _model_with_grads(2)
    w = model.blocks[0].attn.wqkv.weight  # (3 dim, dim): taller than wide, so its step is scaled by sqrt(3)
    before, grad = w.detach().clone(), w.grad.clone()
    MuonAdamW(model, lr=1e-3, muon_lr=0.02, betas=(0.9, 0.95), weight_decay=0.1).step()
    momentum = 0.05 * grad  # the first step: buf = (1 - 0.95) g; nesterov: g + 0.95 (buf - g)
    expected = before - 0.02 * 3 ** 0.5 * orthogonalize(grad.lerp(momentum, 0.95), steps=5)
    assert torch.allclose(w.detach(), expected, atol=1e-6)  # no weight decay on the Muon matrices
