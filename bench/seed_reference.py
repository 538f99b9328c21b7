"""The seed's training formulation, re-implemented for speed comparison only (not used by flashlm).

Eager fp32; attention as explicit scores with a triu -inf mask, softmax and dropout on the probs;
dropout 0.1 on the embedding, attention probs, attention output and FFN output; FSP targets as a
dense (B, n_positions, vocab) multi-hot; separate gate/up matmuls; batch 4 x 8 accumulation.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

D, D_FF, HEADS, LAYERS, VOCAB, DROP = 256, 512, 8, 4, 4096, 0.1
TAU, RATE, ALPHA, POS_WEIGHT = 64, 16, 0.1, 50.0


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(D))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


class SeedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = Norm(), Norm()
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.gate = nn.Linear(D, D_FF, bias=False)
        self.up = nn.Linear(D, D_FF, bias=False)
        self.down = nn.Linear(D_FF, D, bias=False)
        hd = D // HEADS
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd)))

    def rope(self, x):  # x (B, T, H, hd), interleaved pairs
        B, T, H, hd = x.shape
        pairs = x.view(B, T, H, hd // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        ang = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
        c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.n1(x)
        q, k, v = self.qkv(h).view(B, T, 3, HEADS, D // HEADS).unbind(2)
        q, k, v = self.rope(q).transpose(1, 2), self.rope(k).transpose(1, 2), v.transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // HEADS)
        att = att.masked_fill(torch.triu(torch.ones(T, T), 1).bool(), float("-inf"))
        att = F.dropout(F.softmax(att, -1), DROP, self.training)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + F.dropout(self.proj(y), DROP, self.training)
        h = self.n2(x)
        return x + F.dropout(self.down(F.silu(self.gate(h)) * self.up(h)), DROP, self.training)


class SeedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList(SeedBlock() for _ in range(LAYERS))
        self.norm = Norm()
        self.fsp_proj = nn.Linear(D, D, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0, 0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = F.dropout(self.embed(idx), DROP, self.training)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        ce = F.cross_entropy(F.linear(x, self.embed.weight).view(-1, VOCAB), targets.reshape(-1))
        pos = torch.arange(0, T - TAU, RATE)
        logits = F.linear(self.fsp_proj(x[:, pos]), self.embed.weight)
        future = targets[:, pos[:, None] + torch.arange(TAU)[None]]
        dense = torch.zeros(B, len(pos), VOCAB).scatter_(2, future, 1.0)
        fsp = F.binary_cross_entropy_with_logits(logits.reshape(-1, VOCAB), dense.reshape(-1, VOCAB), pos_weight=torch.tensor([POS_WEIGHT]))
        return ce, fsp


def seed_step(model, optimizer, batches) -> float:
    """One optimizer step over 8 micro-batches of (4, 256), as the seed does it."""
    optimizer.zero_grad()
    total = 0.0
    for x, y in batches:
        ce, fsp = model(x, y)
        (ce + ALPHA * fsp).backward()  # the seed sums over accumulation steps
        total += ce.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total / len(batches)
