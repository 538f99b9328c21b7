"""Next-token cross-entropy through the tied 4096-way head, computed in row chunks with its gradients formed on the way."""
from __future__ import annotations

import torch

from flashlm.blas import mm

# Rows of (chunk, vocab) fp32 logits per chunk: 256 x 4096 x 4 B = 4 MB, about one core's L2 cache.
CHUNK_ROWS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ weight.T, targets_i) without the (N, vocab) fp32 logits and their log-softmax backward.

    The plain path (F.linear, .float(), F.cross_entropy) writes the (N, vocab) logits three times and runs a
    log-softmax backward over them, a large share of a training step (bench/train_speed.py). Here each chunk's
    softmax becomes its gradient in place (softmax - onehot) and meets the two backward GEMMs while it is still
    in cache. The GEMMs run in `dtype` (bf16 under autocast, as the plain path's F.linear would), the softmax in
    fp32, so the numbers are the plain path's up to summation order.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # h (N, dim), weight (vocab, dim), targets (N,) int64
        n = h.shape[0]
        hc, w = h.detach().to(dtype), weight.detach().to(dtype)
        grad_h = torch.empty_like(hc)  # (N, dim)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32)  # (vocab, dim)
        total = torch.zeros((), dtype=torch.float32)
        with torch.autocast("cpu", enabled=False):
            for s in range(0, n, CHUNK_ROWS):
                rows = hc[s : s + CHUNK_ROWS]  # (n_c, dim)
                tgt = targets[s : s + CHUNK_ROWS, None]  # (n_c, 1)
                logits = mm(rows, w.T).float()  # (n_c, vocab)
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n_c, 1)
                total += (lse - logits.gather(1, tgt)).sum()
                g = logits.sub_(lse).exp_()  # softmax, in place of the logits
                g.scatter_add_(1, tgt, torch.full_like(lse, -1.0))  # d(sum CE)/d logits = softmax - onehot
                g = g.to(dtype)
                grad_h[s : s + CHUNK_ROWS] = mm(g, w)
                grad_w += mm(g.T, rows)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.h_dtype, ctx.w_dtype = n, h.dtype, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (grad_h * scale).to(ctx.h_dtype), (grad_w * scale).to(ctx.w_dtype), None, None


def head_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE of logits h @ weight.T against targets. h (B, T, dim), weight (vocab, dim), targets (B, T).

    The GEMMs run in bf16 under CPU autocast and in fp32 outside it, like F.linear would.
    """
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else h.dtype
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, targets.reshape(-1), dtype)
