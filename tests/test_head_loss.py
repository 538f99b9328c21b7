import pytest
import torch
import torch.nn.functional as F

from flashlm import head_loss
from flashlm.head_loss import head_cross_entropy


def _plain(h, w, t, bf16):
    """The reference: full logits through F.linear, upcast, F.cross_entropy (the path the chunked loss replaces)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = F.linear(h, w)
    return F.cross_entropy(logits.float().reshape(-1, w.shape[0]), t.reshape(-1))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("rows", [3 * 100, head_loss.CHUNK_ROWS, 2 * head_loss.CHUNK_ROWS + 7])  # chunk edges and a ragged last chunk
def test_chunked_head_loss_equals_full_logits(bf16, rows):
    torch.manual_seed(0)
    h = torch.randn(1, rows, 64, requires_grad=True)
    w = (0.3 * torch.randn(500, 64)).requires_grad_()
    t = torch.randint(0, 500, (1, rows))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        got = head_cross_entropy(h, w, t)
    (got * 2.0).backward()  # a non-unit upstream gradient must scale both gradients
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want = _plain(h, w, t, bf16)
    (want * 2.0).backward()
    # fp32: the same numbers up to summation order; bf16: both round the GEMMs to bf16, in different chunks
    tol = 2e-2 if bf16 else 1e-5
    assert got.dtype == torch.float32 and abs(got.item() - want.item()) <= 1e-5 * want.item() + (1e-3 if bf16 else 0)
    assert gh.dtype == h.dtype and gw.dtype == w.dtype
    assert (gh - h.grad).abs().max() <= tol * h.grad.abs().max()
    assert (gw - w.grad).abs().max() <= tol * w.grad.abs().max()
