import torch
import torch.nn.functional as F

from flashlm.fsp import fsp_loss, fsp_positions, training_loss
from flashlm.model import FlashLMModel
from flashlm.recipes import TrainConfig
from flashlm_core.config import ModelConfig

CFG = ModelConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=64)


def loop_reference(model, h, targets, tau, rate, pos_weight):
    """The seed's definition, one position and one row at a time."""
    B, T = targets.shape
    losses = []
    for b in range(B):
        for p in range(0, T - tau, rate):
            target = torch.zeros(CFG.vocab_size)
            for t in targets[b, p : p + tau].tolist():
                target[t] = 1.0
            logit = F.linear(model.fsp_proj(h[b, p]), model.tok_emb.weight)
            losses.append(F.binary_cross_entropy_with_logits(logit, target, pos_weight=torch.tensor(pos_weight), reduction="none"))
    return torch.stack(losses).mean()


def test_positions_follow_the_seed():
    assert fsp_positions(256, tau=64, rate=16) == list(range(0, 192, 16))
    assert fsp_positions(64, tau=64, rate=16) == []


def test_vectorised_fsp_equals_loop_reference():
    torch.manual_seed(0)
    model = FlashLMModel(CFG)
    targets = torch.randint(0, CFG.vocab_size, (3, 40))
    h = torch.randn(3, 40, CFG.dim)
    got = fsp_loss(model, h, targets, tau=8, rate=5, pos_weight=50.0)
    want = loop_reference(model, h, targets, 8, 5, 50.0)
    assert torch.allclose(got, want, atol=1e-6), (got, want)


def test_alpha_zero_turns_fsp_off():
    torch.manual_seed(0)
    model = FlashLMModel(CFG)
    x = torch.randint(0, CFG.vocab_size, (2, 40))
    y = torch.randint(0, CFG.vocab_size, (2, 40))
    tc = TrainConfig(seq_len=40, fsp_alpha=0.0, fsp_tau=8, fsp_rate=4)
    total, ce, fsp = training_loss(model, x, y, tc)
    assert float(fsp) == 0.0 and torch.equal(total.detach(), ce)
    total.backward()
    assert model.fsp_proj.weight.grad is None  # the projection is never touched
    model.zero_grad()
    total, ce, fsp = training_loss(model, x, y, TrainConfig(seq_len=40, fsp_alpha=0.1, fsp_tau=8, fsp_rate=4))
    total.backward()
    assert float(fsp) > 0 and model.fsp_proj.weight.grad.abs().sum() > 0
    assert torch.allclose(total.detach(), ce + 0.1 * fsp)
