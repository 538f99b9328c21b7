"""fp32 training GEMMs through numpy's OpenBLAS instead of torch's own BLAS, on the CPUs where a probe of the
step's own shapes finds it faster (flashlm.probe); off everywhere else, and always off under autocast and tracing."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

_active = False


@contextmanager
def using(on: bool):
    """Route fp32 linear layers and the head's GEMMs through numpy inside the block (when on)."""
    global _active
    before, _active = _active, on
    try:
        yield
    finally:
        _active = before


def _engaged(*tensors: torch.Tensor) -> bool:
    return (_active and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def _np_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.empty((a.shape[0], b.shape[1]), dtype=torch.float32)
    np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.numpy())
    return out


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D tensors (no autograd): numpy's BLAS when engaged, else torch's."""
    return _np_mm(a, b) if _engaged(a, b) else a @ b


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        return _np_mm(x2, weight.T).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = _np_mm(g2, weight).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_w = _np_mm(g2.T, x2) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias; through numpy's BLAS (forward and backward) when engaged."""
    return _Linear.apply(x, weight) if _engaged(x, weight) else F.linear(x, weight)


def _numpy_blas() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [p for p in threadpool_info() if p.get("user_api") == "blas" and "numpy" in p.get("filepath", "")]


def set_threads(n: int) -> None:
    """numpy's BLAS threads, set to the run's torch thread count (its own pool, sized to all cores by default)."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(user_api="blas").select(filepath=[p["filepath"] for p in _numpy_blas()]).limit(limits=n)


def describe() -> str:
    """numpy's BLAS library, version, kernels and threads, for the line a run prints and the benchmark's record."""
    found = _numpy_blas()
    if not found:
        return "numpy's BLAS: not found"
    p = found[0]
    return f"numpy's {p['internal_api']} {p['version']} ({p.get('architecture')} kernels, {p['num_threads']} {p.get('threading_layer')} threads)"
