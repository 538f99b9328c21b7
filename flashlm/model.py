"""The FlashLM v10 FSP transformer (torch): RoPE attention, SwiGLU, tied head, FSP projection, KV cache."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flashlm.blas import linear
from flashlm_core.artifacts import MASK_VALUE
from flashlm_core.config import ModelConfig

INIT_STD = 0.02  # every Linear and the embedding start as normal(0, INIT_STD)

# Additive bias for masked attention scores. Finite (not -inf) so that a fully masked row, such as a
# left-padding query, gives a finite uniform average instead of NaN that would leak into real rows.

KV = tuple[torch.Tensor, torch.Tensor]  # (key, value), each (B, n_heads, T_total, head_dim)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as F.dropout, from cheaper random bits: an element is dropped when 15 uniform random
    bits fall below round(p * 2**15) (p kept to within 2**-16), four elements per 64-bit draw.

    torch's F.dropout draws one Bernoulli per element, and nine dropouts per micro-batch made that a visible share of
    a bf16 training step; four elements per draw cost a fraction of it (bench/train_speed.py). The mask multiplies
    (0 or 1 in x's dtype) rather than masked_fill_ zeroing, which CPUs do not vectorise like mul; the same elements
    are dropped. Under torch.compile (flashlm.compiled) the same draw gives the same mask, so a compiled step drops
    what an eager one does.
    """
    if not training or p == 0.0:
        return x
    n = x.numel()
    # uniform on [0, 2**63 - 1): each 16-bit slice uniform in its low 15 bits (to within 2**-62); out of place
    # (randint, not random_) because dynamo cannot trace an in-place draw
    words = torch.randint(0, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)  # (ceil(n / 4),)
    if torch.compiler.is_compiling():
        # dynamo cannot trace a view to a narrower dtype: the same four slices by shifts, in the view's
        # (little-endian) order, fused by inductor into the mask's kernel
        shifts = torch.tensor([0, 16, 32, 48], device=x.device)
        bits = (words[:, None] >> shifts).flatten()[:n].view(x.shape)
    else:
        bits = words.view(torch.int16)[:n].view(x.shape)
    keep = ((bits & 0x7FFF) >= round(p * 32768)).to(x.dtype)
    return x.mul(1.0 / (1.0 - p)).mul_(keep)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(cfg: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for interleaved-pair RoPE. positions (B, T) or (T,) -> (B or 1, 1, T, head_dim/2)."""
    inv_freq = torch.tensor(cfg.rope_inv_freq, dtype=torch.float32, device=positions.device)
    if positions.dim() == 1:
        positions = positions[None]
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, half)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by the angle whose cos/sin are given. x (B, H, T, hd); cos/sin (B|1, 1, T, hd/2).

    Each pair is one complex number and the rotation one complex multiply, in fp32: three kernels forward
    (upcast, multiply, downcast) where the real-arithmetic form (strided halves, four multiplies, stack) took ten,
    in a training step that runs it for q and k in every layer.
    """
    if torch.compiler.is_compiling():
        # inductor generates no code for complex ops: the real form, which it fuses into one kernel
        pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, T, hd/2, 2)
        re, im = pairs[..., 0], pairs[..., 1]
        return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, hd/2) complex64
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache."""

    def __init__(self, cfg: ModelConfig, *, dropout: float, attn_dropout: float, manual: bool):
        super().__init__()
        self.cfg = cfg
        self.dropout = dropout  # on the output projection (the residual branch)
        self.attn_dropout = attn_dropout  # on the attention probabilities
        self.manual = manual
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, *, past: KV | None, bias: torch.Tensor | None) -> tuple[torch.Tensor, KV]:
        B, T, D = x.shape
        H, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = linear(x, self.wqkv.weight).view(B, T, 3, H, hd).transpose(1, 3).unbind(2)  # each (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0].to(k.dtype), k), dim=2)  # (B, H, T_past + T, hd)
            v = torch.cat((past[1].to(v.dtype), v), dim=2)
        p = self.attn_dropout if self.training else 0.0
        if self.manual:
            # The seed's formulation: explicit scores, -inf causal mask, softmax, dropout on probs. The
            # 1/sqrt(hd) scale is never a pass over the scores (B, H, T, T_total): dividing them and copying
            # the mask in were a visible share of a bf16 step.
            if bias is None:  # training: no cache, T_total = T
                # The causal mask (-inf above the diagonal) enters as baddbmm's added input and 1/sqrt(hd) as its
                # alpha: one pass over the (B, H, T, T) scores where scaling q, the matmul and a masking pass
                # (masked_fill_, then an in-place add) took three, and the mask has no backward.
                causal = torch.full((T, T), float("-inf"), dtype=q.dtype, device=x.device).triu_(1)
                att = torch.baddbmm(causal.expand(B * H, T, T), q.reshape(B * H, T, hd), k.reshape(B * H, T, hd).transpose(1, 2),
                                    alpha=1.0 / math.sqrt(hd)).view(B, H, T, T)
            else:  # (B, 1, T, T_total) fp32 bias (padding / KV cache): the scores follow it to fp32
                att = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1) + bias  # (B, H, T, T_total)
            att = F.softmax(att, dim=-1)
            if p:
                att = dropout(att, p, self.training)
            y = att @ v
        elif bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, D)
        return dropout(linear(y, self.wo.weight), self.dropout, self.training), (k, v)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up fused into one matmul."""

    def __init__(self, cfg: ModelConfig, *, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.w_gate_up = nn.Linear(cfg.dim, 2 * cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = linear(x, self.w_gate_up.weight).chunk(2, dim=-1)
        return dropout(linear(F.silu(gate) * up, self.w_down.weight), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)); x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, dropout: float, attn_dropout: float, manual: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, dropout=dropout, attn_dropout=attn_dropout, manual=manual)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg, dropout=dropout)

    def forward(self, x, cos, sin, *, past, bias):
        a, present = self.attn(self.attn_norm(x), cos, sin, past=past, bias=bias)
        x = x + a
        return x + self.ffn(self.ffn_norm(x)), present


class FlashLMModel(nn.Module):
    """FlashLM v10 FSP. forward() returns (logits, final-norm hidden, presents)."""

    def __init__(self, cfg: ModelConfig, *, dropout: float = 0.0, attn_dropout: float = 0.0, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.dropout = dropout  # embedding and residual branches
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        blocks = (Block(cfg, dropout=dropout, attn_dropout=attn_dropout, manual=attention == "manual") for _ in range(cfg.n_layers))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.fsp_proj = nn.Linear(cfg.dim, cfg.dim, bias=False) if cfg.fsp else None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)

    def init_projections(self, mode: str) -> None:
        """Re-initialise the residual branches' output projections (attention wo, SwiGLU w_down) of a fresh model.

        normal: leave them as every matrix (INIT_STD); scaled: INIT_STD / sqrt(2 n_layers) (GPT-2's rule, so the
        residual stream's variance does not grow with depth); zero: every block starts as the identity.
        """
        if mode == "normal":
            return
        std = 0.0 if mode == "zero" else INIT_STD / math.sqrt(2 * self.cfg.n_layers)
        with torch.no_grad():
            for block in self.blocks:
                for w in (block.attn.wo.weight, block.ffn.w_down.weight):
                    nn.init.normal_(w, mean=0.0, std=std)  # std 0 gives zeros

    @property
    def head_weight(self) -> torch.Tensor:
        """(vocab, dim): the tied embedding, or the separate head when untied."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        idx: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv: list[KV] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[KV]]:
        """idx (B, T); position_ids (B, T); attention_mask (B, T_past + T), 1 = real token.

        Returns logits (B, T, vocab), hidden (B, T, dim) after the final norm, and one (k, v)
        per layer, each (B, n_heads, T_past + T, head_dim), keys stored after RoPE.
        """
        h, presents = self.backbone(idx, position_ids=position_ids, attention_mask=attention_mask, past_kv=past_kv)
        return F.linear(h, self.head_weight), h, presents

    def backbone(
        self,
        idx: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """forward() without the head: (hidden (B, T, dim) after the final norm, presents); training computes
        its loss from the hidden state in chunks (flashlm.head_loss) instead of materialising the logits."""
        B, T = idx.shape
        past_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=idx.device)[None].expand(B, T)
        cos, sin = rope_tables(self.cfg, position_ids)
        bias = None
        if attention_mask is not None or past_len:
            # allowed[b, i, j]: query i (absolute position past_len + i) may see key j
            j = torch.arange(past_len + T, device=idx.device)
            allowed = (j[None, :] <= (past_len + torch.arange(T, device=idx.device))[:, None])[None, None]
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, :].bool()  # (B, 1, T, T_total)
            bias = torch.zeros(allowed.shape, dtype=torch.float32, device=idx.device).masked_fill(~allowed, MASK_VALUE)
        x = dropout(self.tok_emb(idx), self.dropout, self.training)
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, past=None if past_kv is None else past_kv[i], bias=bias)
            presents.append(kv)
        return self.norm(x), presents

    def fsp_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Future bag-of-words logits: lm_head(fsp_proj(h)). h (..., dim) -> (..., vocab)."""
        if self.fsp_proj is None:
            raise ValueError("this model has no FSP head (ModelConfig.fsp is false)")
        return linear(linear(h, self.fsp_proj.weight), self.head_weight)
