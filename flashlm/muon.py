"""Muon for the blocks' weight matrices and AdamW for the rest (embedding, norms), as one optimizer with one state dict.

Muon (Keller Jordan, 2024): each matrix's update is its Nesterov momentum, orthogonalized by a quintic Newton-Schulz
iteration. torch.optim.Muon runs that iteration in bf16, which a CPU without native bf16 only emulates; this one runs
it in the parameter's dtype (fp32), so an AVX2-only step stays on its fp32 kernels.
"""
from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's coefficients from the Muon post


def orthogonalize(g: torch.Tensor, *, steps: int) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (US'V^T, S' near 1), by Newton-Schulz."""
    a, b, c = NS_COEFFICIENTS
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / x.norm().clamp(min=1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.shape[0] > g.shape[1] else x


def muon_params(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the 2-D weights inside the blocks and the FSP projection, everything else): the embedding, tied to the
    output head, and the norms' vectors stay with AdamW, as Muon's authors advise."""
    matrices, rest = [], []
    for name, p in model.named_parameters():
        (matrices if p.ndim == 2 and not name.startswith("tok_emb") else rest).append(p)
    return matrices, rest


class MuonAdamW(torch.optim.Optimizer):
    """Param groups flagged muon=True take Muon's update, the others AdamW's; group['lr_scale'] multiplies the
    scheduled lr that optimizer_step writes into every group's 'lr'."""

    def __init__(self, model: torch.nn.Module, *, lr: float, muon_lr: float, betas: tuple[float, float], weight_decay: float,
                 momentum: float = 0.95, ns_steps: int = 5) -> None:
        matrices, rest = muon_params(model)
        groups = [{"params": matrices, "muon": True, "lr_scale": muon_lr / lr, "weight_decay": 0.0},
                  {"params": rest, "muon": False, "lr_scale": 1.0, "weight_decay": weight_decay}]
        super().__init__(groups, {"lr": lr, "betas": betas, "momentum": momentum, "ns_steps": ns_steps, "eps": 1e-8})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            lr = group["lr"] * group["lr_scale"]
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(p, self.state[p], group, lr)

    @staticmethod
    def _muon(p: torch.Tensor, state: dict, group: dict, lr: float) -> None:
        if "momentum_buffer" not in state:  # not setdefault: its default would be allocated at every step
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        update = orthogonalize(p.grad.lerp(buf, group["momentum"]), steps=group["ns_steps"])
        p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))

    @staticmethod
    def _adamw(p: torch.Tensor, state: dict, group: dict, lr: float) -> None:
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        p.mul_(1 - lr * group["weight_decay"])
        denom = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
