"""Training losses: next-token cross-entropy plus Future Sentence Prediction (bag-of-words BCE)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flashlm.head_loss import head_cross_entropy
from flashlm.model import FlashLMModel
from flashlm.recipes import TrainConfig


def fsp_positions(seq_len: int, *, tau: int, rate: int) -> list[int]:
    """Positions p = 0, rate, 2*rate, ... with p < seq_len - tau (the seed's definition)."""
    return list(range(0, max(seq_len - tau, 0), rate))


def fsp_loss(model: FlashLMModel, h: torch.Tensor, targets: torch.Tensor, *, tau: int, rate: int, pos_weight: float) -> torch.Tensor:
    """BCE-with-logits between lm_head(fsp_proj(h_p)) and the multi-hot of targets[p : p + tau].

    h (B, T, dim) final-norm hidden; targets (B, T) next-token ids. Returns a scalar (0 if T <= tau).
    """
    B, T = targets.shape
    pos = torch.tensor(fsp_positions(T, tau=tau, rate=rate), device=targets.device)
    if pos.numel() == 0:
        return h.new_zeros((), dtype=torch.float32)
    logits = model.fsp_logits(h[:, pos]).float()  # (B, P, vocab)
    window = pos[:, None] + torch.arange(tau, device=targets.device)  # (P, tau)
    future = targets[:, window]  # (B, P, tau)
    target = torch.zeros_like(logits).scatter_(2, future, 1.0)  # multi-hot (B, P, vocab)
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def training_loss(model: FlashLMModel, idx: torch.Tensor, targets: torch.Tensor, tc: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, fsp) for one micro-batch; total = ce + alpha * fsp. alpha 0 skips FSP entirely."""
    h, _ = model.backbone(idx)  # (B, T, dim); the (B, T, vocab) logits are never materialised
    ce = head_cross_entropy(h, model.head_weight, targets)
    if not uses_fsp(model, tc, seq_len=targets.shape[1]):
        # no FSP term at all (not ce + alpha * 0: under torch.compile that sum came out without a gradient)
        fsp = ce.new_zeros(())
        return ce, ce.detach(), fsp
    fsp = fsp_loss(model, h, targets, tau=tc.fsp_tau, rate=tc.fsp_rate, pos_weight=tc.fsp_pos_weight)
    return ce + tc.fsp_alpha * fsp, ce.detach(), fsp.detach()


def uses_fsp(model: FlashLMModel, tc: TrainConfig, *, seq_len: int | None = None) -> bool:
    """Whether the FSP projection receives gradients under this config (at seq_len, default tc.seq_len)."""
    positions = fsp_positions(seq_len or tc.seq_len, tau=tc.fsp_tau, rate=tc.fsp_rate)
    return tc.fsp_alpha > 0 and model.fsp_proj is not None and bool(positions)


class Objective(torch.nn.Module):
    """training_loss as one module, so DDP and torch.compile see the whole training forward."""

    def __init__(self, model: FlashLMModel, tc: TrainConfig):
        super().__init__()
        self.model = model
        self.tc = tc

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        return training_loss(self.model, idx, targets, self.tc)
