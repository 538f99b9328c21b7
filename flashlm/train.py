"""The training loop: time-budgeted cosine schedule, periodic eval, atomic checkpoints, resume, DDP."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from flashlm import checkpoint
from flashlm.config import ModelConfig, TrainConfig
from flashlm.data import TokenData
from flashlm.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from flashlm.evaluate import loss_sum, subset_spans
from flashlm.fsp import Objective, uses_fsp
from flashlm.generate import generate
from flashlm.model import FlashLM

SAMPLE_PROMPT = "Once upon a time"
TIMING_STEPS = 5  # steps measured (after the first) to size the schedule of a --minutes run


def lr_at(step: int, tc: TrainConfig, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr at total_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return tc.min_lr + (tc.lr - tc.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_starts(step: int, *, seed: int, rank: int, n_tokens: int, tc: TrainConfig) -> np.ndarray:
    """Window starts (grad_accum, micro_batch) for a step; a pure function of (seed, step, rank),
    so a resumed run sees exactly the data the uninterrupted run would have."""
    rng = np.random.default_rng([seed, step, rank])
    return rng.integers(0, n_tokens - tc.seq_len - 1, size=(tc.grad_accum, tc.micro_batch))


def make_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)  # (micro, T + 1)
    t = torch.from_numpy(chunk)
    return t[:, :-1], t[:, 1:]


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over all parameters in state_dict order (to check DDP ranks agree)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current step."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def optimizer_step(step_fn, model, optimizer, tokens, starts, tc: TrainConfig, *, lr: float, ddp=None) -> tuple[float, float, float, float]:
    """One optimizer step over grad_accum micro-batches; returns (loss, ce, fsp, grad_norm).

    The step is skipped (weights untouched) when the loss is not finite, so the caller can stop
    with the last good weights. starts (grad_accum, micro_batch) from batch_starts().
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss_acc = ce_acc = fsp_acc = 0.0
    for micro in range(tc.grad_accum):
        x, y = make_batch(tokens, starts[micro], tc.seq_len)
        sync = ddp is None or micro == tc.grad_accum - 1  # all-reduce only on the last micro-batch
        with (nullcontext() if sync else ddp.no_sync()), (torch.autocast("cpu", dtype=torch.bfloat16) if tc.bf16 else nullcontext()):
            loss, ce, fsp = step_fn(x, y)
        (loss / tc.grad_accum).backward()
        loss_acc += loss.item() / tc.grad_accum
        ce_acc += ce.item() / tc.grad_accum
        fsp_acc += fsp.item() / tc.grad_accum
    if not math.isfinite(loss_acc):
        return loss_acc, ce_acc, fsp_acc, float("nan")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
    optimizer.step()
    return loss_acc, ce_acc, fsp_acc, grad_norm


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def train(
    data_dir,
    out_dir,
    model_cfg: ModelConfig,
    tc: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
) -> dict:
    """Train and return a summary dict. Checkpoints go to out_dir/last and out_dir/best.

    should_stop(step) lets a caller stop like a signal would (checkpoint, then return).
    A fresh run refuses an out_dir that already holds a run unless force=True (which replaces it).
    """
    if tc.minutes is None and tc.max_steps is None:
        raise ConfigError("give a budget: --minutes M (wall clock) or --max-steps N")
    rank, world = _dist_info()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(out_dir)
    data = TokenData.open(data_dir)
    if data.meta["vocab_size"] != model_cfg.vocab_size:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=data.meta["vocab_size"])
    if tc.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    shard = np.array_split(np.arange(len(data.train)), world)[rank]
    train_tokens = data.train[shard[0] : shard[-1] + 1] if len(shard) else data.train[:0]
    if len(train_tokens) < tc.seq_len + 2 or len(data.val) < tc.seq_len + 2:
        raise DataError(f"{data_dir}: too few tokens for seq_len {tc.seq_len} (train shard {len(train_tokens)}, val {len(data.val)})")

    torch.manual_seed(tc.seed + rank)
    model = FlashLM(model_cfg, dropout=tc.dropout, attention=tc.attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    state = {"step": 0, "tokens_seen": 0, "total_steps": tc.max_steps, "best_val": float("inf"), "evals_since_best": 0, "elapsed": 0.0}
    if resume:
        if not (out / "last").is_dir():
            raise CheckpointError(f"{out / 'last'}: nothing to resume; drop --resume to start fresh")
        loaded, cfg = checkpoint.load_checkpoint(out / "last")
        if cfg["model"] != model_cfg:
            raise ConfigError(f"--resume: checkpoint model {cfg['model']} differs from the requested {model_cfg}")
        model.load_state_dict(loaded.state_dict())
        ts = checkpoint.load_train_state(out / "last")
        optimizer.load_state_dict(ts["optimizer"])
        torch.set_rng_state(ts["torch_rng"])
        state.update(json.loads(ts["loop"]))
    elif (out / "last").exists() or (out / "metrics.jsonl").exists():
        if not force:
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it, --force to replace it, or another --out")
        if rank == 0:
            for name in ("last", "best"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
    model.train()
    objective = Objective(model, tc)
    # find_unused_parameters only when the FSP projection gets no gradient (alpha 0 or seq too short)
    ddp = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=not uses_fsp(model, tc)) if world > 1 else None
    step_fn = ddp or objective
    if tc.compile:
        step_fn = torch.compile(step_fn)
    eval_spans = subset_spans(data.val, seq_len=tc.seq_len, n_windows=tc.eval_batches * tc.micro_batch)
    metrics_path = out / "metrics.jsonl"
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if is_main:
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(data.tokenizer_path))

    def log(record: dict) -> None:
        if is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def run_eval() -> float:
        total, count = loss_sum(model, data.val, eval_spans, bf16=tc.bf16)
        return total / count

    def save(name: str, val_loss: float | None) -> None:
        if not is_main:
            return
        info = {"step": state["step"], "tokens_seen": state["tokens_seen"],
                "val_ppl_subset": None if val_loss is None else math.exp(val_loss)}
        train_state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "loop": json.dumps(state)}
        checkpoint.save_checkpoint(out / name, model, train_cfg=tc, tokenizer_path=data.tokenizer_path, info=info, train_state=train_state)

    def sample() -> str:
        ids = tokenizer.encode(SAMPLE_PROMPT).ids
        new = generate(model, ids, max_new_tokens=tc.sample_tokens, temperature=0.8, top_p=0.9, seed=tc.seed, eos_id=data.meta["eot_id"])
        return tokenizer.decode(ids + new)

    bar = None
    if is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=state["total_steps"], initial=state["step"], unit="step", dynamic_ncols=True)
    t_start = time.perf_counter() - state["elapsed"]
    step_times: list[float] = []
    val_loss = None
    status = "done"
    if state["step"] == 0 and is_main:
        t0 = time.perf_counter()
        val_loss = run_eval()
        state["eval_seconds"] = time.perf_counter() - t0
        log({"kind": "eval", "step": 0, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "elapsed": 0.0})

    with _StopFlag() as stop:
        while True:
            step = state["step"]
            if state["total_steps"] is not None and step >= state["total_steps"]:
                break
            elapsed = time.perf_counter() - t_start
            if tc.minutes is not None and elapsed >= tc.minutes * 60:
                break
            t0 = time.perf_counter()
            lr = lr_at(step, tc, state["total_steps"] or 10**9)
            starts = batch_starts(step, seed=tc.seed, rank=rank, n_tokens=len(train_tokens), tc=tc)
            loss_acc, ce_acc, fsp_acc, grad_norm = optimizer_step(step_fn, model, optimizer, train_tokens, starts, tc, lr=lr, ddp=ddp)
            if not math.isfinite(loss_acc):
                raise TrainingDivergedError(
                    f"loss became {loss_acc} at step {step}; the last good checkpoint in {out} is kept. "
                    "Lower --lr, or check the data")
            state["step"] = step = step + 1
            state["tokens_seen"] += tc.tokens_per_step * world
            dt = time.perf_counter() - t0
            state["elapsed"] = time.perf_counter() - t_start

            if tc.minutes is not None and state["total_steps"] is None and step > 1:
                step_times.append(dt)
                if len(step_times) == TIMING_STEPS:
                    # Size the cosine schedule from measured step time (plus periodic eval cost),
                    # never from a guessed throughput.
                    per_step = statistics.median(step_times) + state.get("eval_seconds", 0.0) / tc.eval_every
                    remaining = tc.minutes * 60 - state["elapsed"]
                    state["total_steps"] = step + max(1, int(remaining / per_step))
                    if ddp is not None:  # every rank must stop at the same step
                        t = torch.tensor([state["total_steps"]])
                        dist.broadcast(t, 0)
                        state["total_steps"] = int(t)
                    if bar is not None:
                        bar.total = state["total_steps"]
            if step % tc.log_every == 0 or step == 1:
                tok_s = tc.tokens_per_step * world / dt
                log({"kind": "train", "step": step, "loss": loss_acc, "ce": ce_acc, "fsp": fsp_acc, "lr": lr,
                     "grad_norm": grad_norm, "tok_s": tok_s, "tokens_seen": state["tokens_seen"], "elapsed": state["elapsed"]})
            if bar is not None:
                bar.set_postfix(loss=f"{ce_acc:.3f}", ppl=f"{math.exp(min(ce_acc, 20)):.1f}", tok_s=f"{tc.tokens_per_step * world / dt:,.0f}", refresh=False)
                bar.update(1)

            stop_now = stop.signum is not None or (should_stop is not None and should_stop(step))
            if step % tc.eval_every == 0 and is_main:
                val_loss = run_eval()
                improved = val_loss < state["best_val"]
                state["evals_since_best"] = 0 if improved else state["evals_since_best"] + 1
                text = sample()
                log({"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "elapsed": state["elapsed"], "sample": text})
                if bar is not None:
                    bar.write(f"step {step}: val ppl {math.exp(val_loss):.2f}{' (best)' if improved else ''} | {text!r}")
                if improved:
                    state["best_val"] = val_loss
                    save("best", val_loss)
                save("last", val_loss)
                if tc.early_stop_patience is not None and state["evals_since_best"] >= tc.early_stop_patience:
                    status = "early-stopped"
            if ddp is not None:  # agree on stopping so no rank waits in all-reduce forever
                flag = torch.tensor([int(stop_now or status != "done")])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop_now = bool(flag.item())
            if stop_now:
                status = "interrupted" if stop.signum is not None else "stopped"
                break
            if status != "done":
                break

    if bar is not None:
        bar.close()
    summary = {"status": status, "step": state["step"], "tokens_seen": state["tokens_seen"], "elapsed": state["elapsed"],
               "total_steps": state["total_steps"], "rank": rank, "world": world, "signal": stop.signum,
               "weights_sha256": weights_digest(model)}
    if is_main:
        # last = the final weights; its val figure is the fixed-subset one at the last eval
        if state["step"] % tc.eval_every != 0 or state["step"] == 0:
            val_loss = run_eval()
            log({"kind": "eval", "step": state["step"], "val_loss": val_loss, "val_ppl": math.exp(val_loss), "elapsed": state["elapsed"]})
            if val_loss < state["best_val"]:
                state["best_val"] = val_loss
                save("best", val_loss)
        save("last", val_loss)
        summary["val_ppl_subset_last"] = math.exp(val_loss)
        summary["val_ppl_subset_best"] = math.exp(state["best_val"])
    if world > 1:
        dist.barrier()
    return summary

