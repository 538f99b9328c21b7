"""Export-time validation: ONNX vs torch (fp32), int8 vs fp32, and the IO contract."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from flashlm.model import FlashLMModel
from flashlm_core import artifacts as A
from flashlm_core.errors import ExportError
from flashlm_runtime.session import backbone_feeds, empty_past, io_mismatch, log_softmax, run_backbone

DECODE_STEPS = 32


@dataclass(frozen=True)
class Gates:
    """Thresholds that fail the export when exceeded (each is a CLI flag)."""

    max_fp32_delta: float = 1e-4  # max |logit difference| ONNX fp32 vs torch, prefill and decode
    max_int8_ppl_delta: float = 0.01  # relative PPL increase of int8 over fp32
    min_int8_top1: float = 0.95  # top-1 agreement of int8 with fp32 where fp32's top-1 is clear, teacher forced


# fp32's top-1 is "clear" when it leads the runner-up by this many nats (p1/p2 >= 1.65). On near-flat
# logits (an early checkpoint) int8's rounding legitimately flips near-ties: counting those fails a faithful
# export of an early checkpoint whose PPL barely moved.
CLEAR_MARGIN = 0.5
MIN_CLEAR = 64  # below this many clear positions the top-1 gate has too little to judge and is skipped


def check_finite(array: np.ndarray, what: str) -> None:
    """NaN/Inf never passes a gate (every comparison with NaN is False, so max |Δ| would read 0)."""
    if not np.isfinite(array).all():
        raise ExportError(f"{what} holds NaN or Inf; the checkpoint is broken: export an earlier one (best/ or last/)")


def check_io(session: ort.InferenceSession, expected_inputs: list[str], expected_outputs: list[str], what: str) -> None:
    problem = io_mismatch(session, expected_inputs, expected_outputs)
    if problem:
        raise ExportError(f"{what}: {problem}")


@torch.no_grad()
def top_vs_torch(model: FlashLMModel, session: ort.InferenceSession, prompts: list[list[int]], temperature: float = 0.8) -> float:
    """Max |Δ| between a contrib graph's TOP_PROBS and torch's softmax(logits / temperature) at the same ids, and
    between their total and the mass of torch's TOP_N likeliest tokens (the graph chose the right set)."""
    worst = 0.0
    for ids in prompts:
        ids = ids[-model.cfg.max_seq_len:]
        probs = torch.softmax(model(torch.tensor([ids]))[0][0, -1].double() / temperature, -1).numpy()  # (V,)
        x = np.array([ids], np.int64)
        feeds = {**backbone_feeds(model.cfg, x, np.ones_like(x), None, empty_past(model.cfg, 1)), A.TEMPERATURE: np.array([temperature], np.float32)}
        top_probs, top_ids = (a[0] for a in session.run([A.TOP_PROBS, A.TOP_IDS], feeds))
        check_finite(top_probs, "ONNX top_probs")
        mass = np.sort(probs)[::-1][: top_probs.size].sum()
        worst = max(worst, float(np.abs(top_probs - probs[top_ids]).max()), abs(float(top_probs.sum()) - mass))
    return worst


@torch.no_grad()
def fp32_vs_torch(model: FlashLMModel, session: ort.InferenceSession, prompts: list[list[int]]) -> dict:
    """Prefill each prompt, then DECODE_STEPS greedy steps; max |Δlogits| for prefill and decode."""
    cfg = model.cfg
    worst_prefill = worst_decode = 0.0
    for ids in prompts:
        ids = ids[-(cfg.max_seq_len - DECODE_STEPS):]
        t_logits, _, t_past = model(torch.tensor([ids]))
        o_logits, o_past, _ = run_backbone(session, cfg, np.array([ids], np.int64))
        check_finite(t_logits.numpy(), "torch logits")
        check_finite(o_logits, "ONNX fp32 logits")
        worst_prefill = max(worst_prefill, float(np.abs(o_logits - t_logits.numpy()).max()))
        for _ in range(DECODE_STEPS):
            nxt = int(t_logits[0, -1].argmax())
            t_logits, _, t_past = model(torch.tensor([[nxt]]), past_kv=t_past)
            o_logits, o_past, _ = run_backbone(session, cfg, np.array([[nxt]], np.int64), past=o_past)
            check_finite(o_logits, "ONNX fp32 decode logits")
            worst_decode = max(worst_decode, float(np.abs(o_logits - t_logits.numpy()).max()))
    return {"prompts": len(prompts), "decode_steps": DECODE_STEPS, "max_abs_prefill": worst_prefill, "max_abs_decode": worst_decode}


@torch.no_grad()
def fsp_vs_torch(model: FlashLMModel, session: ort.InferenceSession, prompts: list[list[int]]) -> float:
    worst = 0.0
    for ids in prompts:
        _, h, _ = model(torch.tensor([ids[-model.cfg.max_seq_len:]]))
        want = model.fsp_logits(h).numpy()
        got = session.run(None, {A.FSP_HIDDEN: h.numpy()})[0]
        check_finite(got, "FSP head logits")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def int8_vs_fp32(cfg, fp32: ort.InferenceSession, int8: ort.InferenceSession, windows: np.ndarray) -> dict:
    """int8 ONNX against fp32 ONNX on validation windows (see agreement)."""
    return agreement(windows, lambda x: run_backbone(fp32, cfg, x)[0], lambda x: run_backbone(int8, cfg, x)[0])


def agreement(windows: np.ndarray, reference, candidate, names: tuple[str, str] = ("fp32", "int8")) -> dict:
    """Teacher-forced comparison on windows (N, T+1) of validation tokens. reference and candidate map
    ids (1, T) to logits (1, T, vocab). Returns the PPL of both (keys ppl_<name>), mean KL(reference ||
    candidate), and top-1 agreement over all positions and over those where the reference is clear."""
    nll_ref = nll_cand = kl = 0.0
    agree = agree_clear = clear = count = 0
    worst = 0.0
    for row in windows:
        x, y = row[None, :-1].astype(np.int64), row[1:].astype(np.int64)
        a, b = reference(x), candidate(x)
        check_finite(b, f"{names[1]} logits")
        la, lb = log_softmax(a[0]), log_softmax(b[0])  # (T, vocab)
        worst = max(worst, float(np.abs(a - b).max()))
        same = la.argmax(-1) == lb.argmax(-1)
        top2 = np.partition(la, -2, axis=-1)[:, -2:]  # (T, 2): runner-up, top
        is_clear = top2[:, 1] - top2[:, 0] >= CLEAR_MARGIN
        agree += int(same.sum())
        agree_clear += int((same & is_clear).sum())
        clear += int(is_clear.sum())
        count += len(y)
        kl += float((np.exp(la) * (la - lb)).sum())
        nll_ref -= float(la[np.arange(len(y)), y].sum())
        nll_cand -= float(lb[np.arange(len(y)), y].sum())
    ppl_ref, ppl_cand = float(np.exp(nll_ref / count)), float(np.exp(nll_cand / count))
    return {"tokens": count, "top1_agreement": agree / count, "clear_positions": clear,
            "top1_agreement_clear": agree_clear / clear if clear else None, "clear_margin_nats": CLEAR_MARGIN,
            "kl_mean": kl / count, "max_abs_logit_delta": worst,
            f"ppl_{names[0]}": ppl_ref, f"ppl_{names[1]}": ppl_cand, "ppl_rel_delta": ppl_cand / ppl_ref - 1.0}


def int8_failures(r: dict, gates: Gates) -> list[str]:
    """What makes an int8 export unfaithful: PPL drift, or disagreement where fp32 is sure."""
    failed = []
    if not r["ppl_rel_delta"] <= gates.max_int8_ppl_delta:  # written so that NaN fails
        failed.append(f"PPL {r['ppl_rel_delta']:+.2%} (limit {gates.max_int8_ppl_delta:+.2%})")
    if r["clear_positions"] >= MIN_CLEAR and not r["top1_agreement_clear"] >= gates.min_int8_top1:
        failed.append(f"top-1 agreement {r['top1_agreement_clear']:.1%} where fp32 is clear (limit {gates.min_int8_top1:.0%})")
    return failed


def fsp_int8_vs_fp32(fp32: ort.InferenceSession, int8: ort.InferenceSession, hidden: np.ndarray, k: int = 20) -> dict:
    """Agreement of the FSP read-out: overlap of the top-k predicted future tokens, and max |Δ|."""
    a = fp32.run(None, {A.FSP_HIDDEN: hidden})[0]
    b = int8.run(None, {A.FSP_HIDDEN: hidden})[0]
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # (positions, vocab)
    top_a = np.argpartition(-a, k, axis=-1)[:, :k]
    top_b = np.argpartition(-b, k, axis=-1)[:, :k]
    overlap = np.mean([len(set(p) & set(q)) / k for p, q in zip(top_a, top_b)])
    return {"positions": a.shape[0], f"top{k}_overlap": float(overlap), "max_abs_logit_delta": float(np.abs(a - b).max())}
