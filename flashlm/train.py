"""The training loop, one named step each: open_run (data, model, resume), train_step / optimizer_step,
the --minutes budget (flashlm.clock, or size_schedule), evaluate_and_save (periodic eval, best/last checkpoints), finish."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import sys
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from flashlm import blas, checkpoint, clock, probe
from flashlm.compiled import choose_compile, compile_step
from flashlm.data import TokenData, TokenWindows
from flashlm.evaluate import loss_sum, subset_spans
from flashlm.fsp import Objective, uses_fsp
from flashlm.generate import generate
from flashlm.model import FlashLMModel
from flashlm.muon import MuonAdamW
from flashlm.precision import choose_bf16
from flashlm.recipes import EVAL_ROWS, TrainConfig, pick_attention
from flashlm_core import artifacts as A
from flashlm_core import atomic
from flashlm_core.config import ModelConfig
from flashlm_core.errors import CheckpointError, ConfigError, DataError, FlashLMError, TrainingDivergedError
from flashlm_core.threads import busy_cores, choose_threads
from flashlm_core.tokenizer_identity import tokenizer_difference

SAMPLE_PROMPT = "Once upon a time"
TIMING_STEPS = 5  # steps measured (after the first) to size the schedule of a --minutes run
TIMING_SHARE = 0.03  # ... or fewer, once they add up to this share of the budget (slow machines)
UNSTABLE_SPREAD = 1.5  # slowest / fastest timed step above this: warn that the CPU looks shared


def lr_at(step: int, tc: TrainConfig, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then cosine (or warmup-stable-decay) from lr to min_lr at total_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.schedule == "wsd":
        decay_start = total_steps - max(1, int(tc.decay_frac * total_steps))
        if step < decay_start:
            return tc.lr
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return tc.lr + (tc.min_lr - tc.lr) * progress
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return tc.min_lr + (tc.lr - tc.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@functools.lru_cache(maxsize=2)
def _epoch_tiling(seed: int, rank: int, epoch: int, n_windows: int, seq_len: int) -> np.ndarray:
    """One pass's window starts: the split tiled by seq_len from an offset drawn for this pass, in a shuffled order."""
    rng = np.random.default_rng([seed, rank, epoch, 1])  # the trailing 1 keeps these streams apart from the random draws
    return rng.integers(0, seq_len) + rng.permutation(n_windows) * seq_len


def batch_starts(step: int, *, seed: int, rank: int, n_tokens: int, tc: TrainConfig) -> np.ndarray:
    """Window starts (grad_accum, micro_batch) for a step; a pure function of (seed, step, rank),
    so a resumed run sees exactly the data the uninterrupted run would have."""
    shape = (tc.grad_accum, tc.micro_batch)
    if tc.sampling == "random":
        rng = np.random.default_rng([seed, step, rank])
        return rng.integers(0, n_tokens - tc.seq_len - 1, size=shape)
    n_windows = (n_tokens - tc.seq_len - 1) // tc.seq_len  # one window short, so that any offset < seq_len fits
    if n_windows < 1:
        raise ConfigError(f"--sampling epoch needs more than {2 * tc.seq_len + 1} training tokens, the split has {n_tokens}; "
                          "use --sampling random or more data")
    per_step = shape[0] * shape[1]
    index = step * per_step + np.arange(per_step)  # this step's place in the stream of windows
    epochs, slots = np.divmod(index, n_windows)
    starts = [_epoch_tiling(seed, rank, int(e), n_windows, tc.seq_len)[s] for e, s in zip(epochs, slots)]
    return np.asarray(starts, dtype=np.int64).reshape(shape)


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


class Ema:
    """Exponential moving average of the parameters (fp32), swapped in to evaluate and to save."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # warm-up: early on the average must not remember the random init for ~1/(1-decay) steps
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in model.named_parameters():
            self.shadow[n].lerp_(p.detach(), 1 - d)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the block, its own weights again after it."""
        own = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(own[n])


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """tc.optimizer: AdamW over every parameter (fused: one kernel over all parameters instead of a dozen foreach
    passes, the same update up to rounding), decaying all of them or only the matrices (tc.weight_decay_on), or Muon
    for the blocks' matrices with AdamW for the rest."""
    if tc.optimizer == "muon":
        return MuonAdamW(model, lr=tc.lr, muon_lr=tc.muon_lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    params = list(model.parameters())
    if tc.weight_decay_on == "matrices":
        params = [{"params": [p for p in params if p.ndim >= 2]}, {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay, fused=True)


def optimizer_step(step_fn, model, optimizer, tokens, starts, tc: TrainConfig, *, lr: float, ddp=None) -> tuple[float, float, float, float]:
    """One optimizer step over grad_accum micro-batches; returns (loss, ce, fsp, grad_norm).

    The step is skipped (weights untouched) when the loss or the gradient is not finite, so the
    caller can stop with the last good weights. starts (grad_accum, micro_batch) from batch_starts().
    """
    for group in optimizer.param_groups:
        group["lr"] = lr  # MuonAdamW scales it by each group's lr_scale
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
    if not math.isfinite(grad_norm):
        return float("nan"), ce_acc, fsp_acc, grad_norm
    optimizer.step()
    return loss_acc, ce_acc, fsp_acc, grad_norm


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


@dataclass
class Run:
    """Everything one training run holds; `state` is what a checkpoint stores to resume exactly."""

    out: Path
    tc: TrainConfig
    data: TokenData
    train_tokens: TokenWindows  # this rank's shard
    model: FlashLMModel
    optimizer: torch.optim.Optimizer
    rank: int
    world: int
    ema: Ema | None = None
    compiled: bool = False  # the step goes through torch.compile (flashlm.compiled.choose_compile)
    state: dict = field(default_factory=lambda: {"step": 0, "tokens_seen": 0, "total_steps": None, "best_val": float("inf"),
                                                 "evals_since_best": 0, "elapsed": 0.0})

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def schedule_steps(self) -> int:
        """Where the LR schedule ends: the seed's fixed rule, else the stopping step once known."""
        return self.tc.schedule_steps or self.state["total_steps"] or 10**9

    def log(self, record: dict) -> None:
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def weights(self):
        """Context: the weights to evaluate and save (the EMA when on)."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext(self.model)


# The shipped model's weights as a checkpoint folder (MODEL_CARD.md), in a clone of the repository: --init-from default
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / A.MODEL_NAME


def init_checkpoint(init_from: str) -> Path:
    """The checkpoint folder --init-from names ('default' is the shipped model's)."""
    if init_from == "default":
        if not (DEFAULT_CHECKPOINT / checkpoint.CONFIG).is_file():
            raise CheckpointError(f"--init-from default: the shipped checkpoint {DEFAULT_CHECKPOINT} is not here (it lives in the "
                                  "repository's models/ folder, not in the pip package): clone the repository or give a folder")
        return DEFAULT_CHECKPOINT
    return Path(init_from)


def _init_source(init_from: str, data: TokenData, data_dir) -> tuple[ModelConfig, dict]:
    """(architecture, weights) of the checkpoint a fresh run starts from, checked against the data folder: the same
    vocabulary size, and a tokenizer that tokenizes alike (compared by content, not file bytes)."""
    folder = init_checkpoint(init_from)
    model, cfg = checkpoint.load_checkpoint(folder)
    if data.meta["vocab_size"] != model.cfg.vocab_size:
        raise DataError(f"{data_dir}: vocabulary of {data.meta['vocab_size']} tokens, but --init-from {init_from} has "
                        f"{model.cfg.vocab_size}: prepare the text with that checkpoint's tokenizer "
                        f"(flashlm-prepare TEXT --tokenizer {folder / checkpoint.TOKENIZER})")
    difference = tokenizer_difference(data.tokenizer_path, folder / checkpoint.TOKENIZER)
    if difference:
        raise DataError(f"{data_dir} was prepared with another tokenizer than --init-from {init_from} ({difference}): "
                        f"prepare it with flashlm-prepare TEXT --tokenizer {folder / checkpoint.TOKENIZER}")
    info = {"path": str(folder.resolve()), "step": cfg.get("step"), "imported": cfg.get("imported"),
            "init_from": cfg.get("init_from")}
    return model.cfg, {"weights": model.state_dict(), "info": info}


def _open_data(data_dir, model_cfg: ModelConfig, tc: TrainConfig, rank: int, world: int) -> tuple[TokenData, TokenWindows, ModelConfig]:
    data = TokenData.open(data_dir)
    if data.meta["vocab_size"] != model_cfg.vocab_size:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=data.meta["vocab_size"])
    if tc.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    train_tokens = data.train_windows(rank=rank, world=world)
    if len(train_tokens) < tc.seq_len + 2 or len(data.val) < tc.seq_len + 2:
        raise DataError(f"{data_dir}: too few tokens for seq_len {tc.seq_len} (train shard {len(train_tokens)}, val {len(data.val)})")
    return data, train_tokens, model_cfg


def _read_last(run: Run, model_cfg: ModelConfig) -> dict:
    """What --resume takes from OUT/last: weights, optimizer, RNG, loop state, EMA."""
    last = run.out / "last"
    if not last.is_dir():
        raise CheckpointError(f"{last}: nothing to resume; drop --resume to start fresh")
    loaded, cfg = checkpoint.load_checkpoint(last)
    if cfg["model"] != model_cfg:
        raise ConfigError(f"--resume: checkpoint model {cfg['model']} differs from the requested {model_cfg}")
    ts = checkpoint.load_train_state(last)
    return {"weights": ts.get("raw_weights") or loaded.state_dict(), "optimizer": ts["optimizer"], "torch_rng": ts["torch_rng"],
            "loop": json.loads(ts["loop"]), "ema": ts.get("ema") or dict(loaded.named_parameters())}


def _from_rank0(run: Run, read: Callable[[], dict]) -> dict:
    """read() on rank 0, its result (or its error) sent to every rank: under torchrun on several machines only rank
    0's disk holds the run folder."""
    if run.world == 1:
        return read()
    payload = None
    if run.is_main:
        try:
            payload = read()
        except FlashLMError as exc:
            payload = {"error": exc}
    box = [payload]
    dist.broadcast_object_list(box, src=0)
    if "error" in box[0]:
        raise box[0]["error"]
    return box[0]


def _resume(run: Run, model_cfg: ModelConfig, notes: list[str] | None) -> None:
    """Load OUT/last (rank 0's) into the run; a larger --max-steps extends a finished run. On another number of
    ranks than saved it the run goes on, with a note: each step's windows depend on the ranks, so the data differs."""
    saved = _from_rank0(run, lambda: _read_last(run, model_cfg))
    run.model.load_state_dict(saved["weights"])
    run.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    world = saved["loop"].get("world")  # None in a run saved before the rank count was recorded
    run.state.update(saved["loop"])
    run.state["world"] = run.world
    if run.ema is not None:
        run.ema.shadow = {n: t.clone() for n, t in saved["ema"].items()}
    if run.tc.max_steps is not None:
        run.state["total_steps"] = run.tc.max_steps
    done = run.state["total_steps"]
    if done is not None and run.state["step"] >= done:
        raise ConfigError(f"{run.out} already finished at step {run.state['step']}; pass --max-steps N with N > "
                          f"{run.state['step']} to train it further, or drop --resume to start a new run")
    if world not in (None, run.world) and notes is not None:
        notes.append(f"resume: saved by {world} rank(s), continued on {run.world}; the data order from step "
                     f"{run.state['step']} on differs from the uninterrupted run's")
    if run.is_main:
        _trim_metrics(run.out / "metrics.jsonl", run.state["step"])


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):  # a row cut short by kill -9
            continue
    atomic.write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _clear_previous(out: Path, *, force: bool) -> None:
    if not ((out / "last").exists() or (out / "best").exists() or (out / "metrics.jsonl").exists()):
        return
    if not force:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, --force to replace it, or another --out")
    for name in ("last", "best"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def open_run(data_dir, out_dir, model_cfg: ModelConfig, tc: TrainConfig, *, resume: bool, force: bool,
             notes: list[str] | None = None) -> Run:
    """Data, model, optimizer and state of a fresh or resumed run (crash leftovers cleaned first); a fresh --minutes
    run is first probed (flashlm.probe: the GEMM path, the short-run recipe), what it decided appended to `notes`."""
    rank, world = _dist_info()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the run")
    start = None
    if tc.init_from and not resume:
        model_cfg, start = _init_source(tc.init_from, TokenData.open(data_dir), data_dir)
    data, train_tokens, model_cfg = _open_data(data_dir, model_cfg, tc, rank, world)
    if rank == 0:
        for name in ("last", "best", "metrics.jsonl"):
            atomic.recover(out / name)
        if not resume:
            _clear_previous(out, force=force)
    probe_seconds = 0.0
    if not resume and world == 1:  # a fresh run alone; the probe's steps count in its --minutes budget
        tc, lines, probe_seconds = probe.adapt(model_cfg, tc)
        if notes is not None:
            notes.extend(lines)
    elif tc.gemm == "auto":  # resumed runs keep their saved choice; ranks under torchrun are not probed
        tc = dataclasses.replace(tc, gemm="torch")
    torch.manual_seed(tc.seed + rank)
    model = FlashLMModel(model_cfg, dropout=tc.dropout, attn_dropout=tc.attn_dropout, attention=tc.attention)
    model.init_projections(tc.proj_init)  # before any load: resumed and --init-from weights replace it
    if start is not None:
        model.load_state_dict(start["weights"])  # fresh optimizer state, schedule and data order: a new run
    optimizer = make_optimizer(model, tc)
    run = Run(out, tc, data, train_tokens, model, optimizer, rank, world, ema=Ema(model, tc.ema) if tc.ema else None)
    run.state["total_steps"] = tc.max_steps
    run.state["elapsed"] = probe_seconds
    if start is not None:
        run.state["init_from"] = start["info"]
    run.state["world"] = world
    if resume:
        _resume(run, model_cfg, notes)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model.train()
    return run


def save(run: Run, name: str, val_loss: float | None) -> None:
    """Write OUT/name atomically: the evaluated weights (EMA when on), config, and the state to resume."""
    if not run.is_main:
        return
    info = {"step": run.state["step"], "tokens_seen": run.state["tokens_seen"],
            "val_ppl_subset": None if val_loss is None else math.exp(val_loss)}
    if run.state.get("init_from"):
        info["init_from"] = run.state["init_from"]
    train_state = {"optimizer": run.optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "loop": json.dumps(run.state)}
    if run.ema is not None:
        train_state["raw_weights"] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        train_state["ema"] = run.ema.shadow
    t0 = clock.now()
    with run.weights() as model:
        checkpoint.save_checkpoint(run.out / name, model, train_cfg=run.tc, tokenizer_path=run.data.tokenizer_path,
                                   info=info, train_state=train_state)
    run.state["save_seconds"] = max(run.state.get("save_seconds", 0.0), clock.now() - t0)


def run_eval(run: Run, spans) -> float:
    """Mean CE (nats) of the evaluated weights on the fixed validation subset; NaN is an error."""
    with run.weights() as model:
        total, count = loss_sum(model, run.data.val, spans, bf16=run.tc.bf16)
    loss = total / count
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"validation loss became {loss} at step {run.state['step']}; {_kept(run)}. Lower --lr")
    return loss


def _kept(run: Run) -> str:
    return f"the last good checkpoint {run.out / 'last'} is kept" if (run.out / "last").is_dir() else "no checkpoint was written yet"


def sample(run: Run, tokenizer) -> str:
    ids = tokenizer.encode(SAMPLE_PROMPT).ids
    with run.weights() as model:
        new = generate(model, ids, max_new_tokens=run.tc.sample_tokens, seed=run.tc.seed,
                       eos_id=run.data.meta["eot_id"])
    return tokenizer.decode(ids + new)


def log_eval(run: Run, val_loss: float, **extra) -> None:
    """One metrics.jsonl row for an evaluation on the fixed validation subset, at the run's step and clock."""
    st = run.state
    run.log({"kind": "eval", "step": st["step"], "val_loss": val_loss, "val_ppl": math.exp(val_loss), "elapsed": st["elapsed"], **extra})


def evaluate_and_save(run: Run, spans, tokenizer, bar) -> bool:
    """The periodic eval: log the subset loss and a sample, save best/ and last/; True = early stop."""
    st = run.state
    st["last_val"] = val_loss = run_eval(run, spans)
    improved = val_loss < st["best_val"]
    st["evals_since_best"] = 0 if improved else st["evals_since_best"] + 1
    text = sample(run, tokenizer)
    log_eval(run, val_loss, sample=text)
    if bar is not None:
        bar.write(f"step {st['step']}: val ppl {math.exp(val_loss):.2f}{' (best)' if improved else ''} | {text!r}")
    if improved:
        st["best_val"] = val_loss
        save(run, "best", val_loss)
    save(run, "last", val_loss)
    return run.tc.early_stop_patience is not None and st["evals_since_best"] >= run.tc.early_stop_patience


def size_schedule(run: Run, step_times: list[float], ddp) -> bool:
    """For a --minutes run: once enough steps are timed, fix total_steps so the schedule ends on the
    budget (measured step time plus periodic eval cost, never a guessed throughput). True when sized."""
    tc, st = run.tc, run.state
    budget = tc.minutes * 60
    if len(step_times) < TIMING_STEPS and sum(step_times) < TIMING_SHARE * budget:
        return False
    per_step = statistics.median(step_times) + st.get("eval_seconds", 0.0) / tc.eval_every
    st["per_step"] = per_step
    st["total_steps"] = st["step"] + max(1, int((budget - st["elapsed"]) / per_step))
    if ddp is not None:  # every rank must stop at the same step
        t = torch.tensor([st["total_steps"]])
        dist.broadcast(t, 0)
        st["total_steps"] = int(t)
    return True


def timing_sample(seconds: float, minutes: float, *, warm_up: bool, compiled: bool) -> bool:
    """Whether a step's time sizes a --minutes schedule: not a run's first step, which warms up (and compiles:
    15-40 s, which would size a 10-minute schedule to a few dozen steps), unless the run is eager and that one
    step is already a large share of the budget (a slow machine, where waiting for more would waste it)."""
    return not warm_up or (not compiled and seconds > TIMING_SHARE * minutes * 60)


def timing_warning(step_times: list[float]) -> str | None:
    """A line for the user when the steps timed to size a --minutes schedule varied much (a shared CPU), else None."""
    fast, slow = min(step_times), max(step_times)
    if slow <= UNSTABLE_SPREAD * fast:
        return None
    return (f"warning: step times varied from {fast:.2f} s to {slow:.2f} s while sizing the --minutes schedule "
            f"(is other work running on these cores?); it is sized from the median {statistics.median(step_times):.2f} s and "
            "the run stops on the clock, so if steps stay slow the learning rate will not have decayed. "
            "For a result that does not depend on the machine's load, train by --max-steps")


def _out_of_budget(run: Run) -> bool:
    """Stop when the next step would end past the --minutes budget (not only once it is spent); a run by the clock
    also keeps the periodic evaluation the next step would trigger and the closing one inside it."""
    tc, st = run.tc, run.state
    if tc.minutes is None:
        return False
    if clock.by_time(tc):
        return clock.out_of_budget(tc, st, next_evaluates=(st["step"] + 1) % tc.eval_every == 0)
    return st["elapsed"] + st.get("per_step", 0.0) > tc.minutes * 60


def _share_clock(run: Run, ddp) -> None:
    """Under torchrun every rank takes rank 0's clock readings, so all compute the same learning rate and stop together."""
    if ddp is None or not clock.by_time(run.tc):
        return
    st = run.state
    keys = ("elapsed", "eval_seconds", "save_seconds", "periodic_eval_seconds")
    t = torch.tensor([float(st.get(k, 0.0)) for k in keys] + list(st.get("recent_steps", [])), dtype=torch.float64)
    dist.broadcast(t, 0)
    values = t.tolist()
    st.update(zip(keys, values[: len(keys)]))
    st["recent_steps"] = values[len(keys):]


def resolve_kernels(tc: TrainConfig) -> tuple[TrainConfig, str]:
    """tc with precision (bf16 None -> from the CPU) and attention ("auto" -> per precision) decided, as a run
    will use them, and the line saying why; the benchmarks call it to time what flashlm-train runs."""
    use_bf16, why = choose_bf16(tc.bf16)
    return dataclasses.replace(tc, bf16=use_bf16, attention=pick_attention(tc.attention, bf16=use_bf16)), why


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
    log=None,
) -> dict:
    """Train and return a summary dict. Checkpoints go to out_dir/last and out_dir/best.

    should_stop(step) lets a caller stop like a signal would (checkpoint, then return).
    A fresh run refuses an out_dir that already holds a run unless force=True (which replaces it).
    tc.bf16 None is decided from the CPU (flashlm.precision), tc.compile None from the run's length and a C++ compiler
    (flashlm.compiled); each is said in one line through `log`.
    """
    if tc.minutes is None and tc.max_steps is None:
        raise ConfigError("give a budget: --minutes M (wall clock) or --max-steps N")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes the run folder
        return _train(data_dir, out_dir, model_cfg, tc, resume=resume, force=force, progress=progress, should_stop=should_stop, log=log)
    with atomic.exclusive(Path(out_dir), what="training run"):  # a second run into the same --out stops at once
        return _train(data_dir, out_dir, model_cfg, tc, resume=resume, force=force, progress=progress, should_stop=should_stop, log=log)


def _train(data_dir, out_dir, model_cfg: ModelConfig, tc: TrainConfig, *, resume: bool, force: bool, progress: bool,
           should_stop, log) -> dict:
    tc, why = resolve_kernels(tc)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the process group starts in open_run
    compiled, compile_line = choose_compile(tc, world=world)
    # under torchrun each rank's threads are set by its launcher (OMP_NUM_THREADS); alone, count the free cores
    threads, threads_line = choose_threads(tc.threads, cores=os.cpu_count() or 1, busy=busy_cores() if world == 1 and not tc.threads else None)
    say = log or (lambda line: print(line, file=sys.stderr))
    if threads_line:
        torch.set_num_threads(threads)
    probe_lines: list[str] = []
    run = open_run(data_dir, out_dir, model_cfg, tc, resume=resume, force=force, notes=probe_lines)
    run.compiled = compiled
    if run.is_main:  # said once the run's inputs passed their checks, so a bad input is one line
        for line in (why, compile_line, threads_line, *probe_lines):
            if line:
                say(line)
    if run.tc.gemm == "numpy":
        blas.set_threads(torch.get_num_threads())
    with blas.using(run.tc.gemm == "numpy"):
        return _loop(run, should_stop=should_stop, progress=progress, say=say)


def train_step(run: Run, step_fn, ddp) -> dict:
    """One optimizer step at the scheduled LR, the EMA update, the counters; returns the log record."""
    tc, st = run.tc, run.state
    lr = clock.lr_by_time(st["step"], st["elapsed"], tc, st) if clock.by_time(tc) else lr_at(st["step"], tc, run.schedule_steps)
    starts = batch_starts(st["step"], seed=tc.seed, rank=run.rank, n_tokens=len(run.train_tokens), tc=tc)
    loss, ce, fsp, grad_norm = optimizer_step(step_fn, run.model, run.optimizer, run.train_tokens, starts, tc, lr=lr, ddp=ddp)
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"loss became {loss} at step {st['step']}; {_kept(run)}. Lower --lr, or check the data")
    st["step"] += 1
    if run.ema is not None:
        run.ema.update(run.model, st["step"])
    st["tokens_seen"] += tc.tokens_per_step * run.world
    return {"kind": "train", "step": st["step"], "loss": loss, "ce": ce, "fsp": fsp, "lr": lr, "grad_norm": grad_norm}


def _first_compiled_step(run: Run, step_fn, eager, ddp, say: Callable[[str], None]) -> tuple[dict, Callable]:
    """The first step through the compiled step_fn, which compiles it; when compiling fails on this machine (a
    broken compiler, an unsupported platform), the same step again eagerly: (log record, step_fn to go on with)."""
    rng = torch.get_rng_state()
    try:
        return train_step(run, step_fn, ddp), step_fn
    except (FlashLMError, KeyboardInterrupt):
        raise
    except Exception as exc:  # torch._dynamo / inductor errors have no common public base
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        say(f"compile: failed ({type(exc).__name__}: {reason}); training eagerly (--no-compile skips the attempt)")
        torch.set_rng_state(rng)  # the step again with the same dropout masks and nothing half-applied
        run.optimizer.zero_grad(set_to_none=True)
        run.compiled = False
        return train_step(run, eager, ddp), eager


def _loop(run: Run, *, should_stop, progress: bool, say: Callable[[str], None]) -> dict:
    """The step loop with periodic eval; stops on the budget, a signal, should_stop or early stopping."""
    tc, st = run.tc, run.state
    objective = Objective(run.model, tc)
    # find_unused_parameters only when the FSP projection gets no gradient (alpha 0 or seq too short)
    ddp = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=not uses_fsp(run.model, tc)) if run.world > 1 else None
    eager = ddp or objective
    step_fn = compile_step(eager) if run.compiled else eager
    spans = subset_spans(run.data.val, seq_len=tc.seq_len, n_windows=tc.eval_batches * EVAL_ROWS)
    tokenizer = bar = None
    if run.is_main:
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(run.data.tokenizer_path))
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=st["total_steps"], initial=st["step"], unit="step", dynamic_ncols=True)
    t_start = clock.now() - st["elapsed"]
    first_step = st["step"]
    step_times: list[float] = []
    status = "done"
    if st["step"] == 0 and run.is_main:
        t0 = clock.now()
        val_loss = run_eval(run, spans)
        st["eval_seconds"] = clock.now() - t0
        log_eval(run, val_loss)
    with _StopFlag() as stop:
        while not (st["total_steps"] is not None and st["step"] >= st["total_steps"]) and not _out_of_budget(run):
            t0 = clock.now()
            warm_up = st["step"] == first_step
            compiling = warm_up and run.compiled  # this step compiles, or tries to: its time is not a step's, even on a fallback
            if compiling:
                record, step_fn = _first_compiled_step(run, step_fn, eager, ddp, say)
            else:
                record = train_step(run, step_fn, ddp)
            dt = clock.now() - t0
            st["elapsed"] = clock.now() - t_start
            if not compiling:
                clock.note_step(st, dt)
            if st["step"] == tc.warmup_steps:
                st["warmup_end_s"] = st["elapsed"]
            if clock.by_time(tc):
                if bar is not None:
                    bar.total = st["step"] + max(0, int((clock.end_seconds(tc, st) - st["elapsed"]) / max(clock.next_step_seconds(st), 1e-9)))
            elif tc.minutes is not None and st["total_steps"] is None and timing_sample(dt, tc.minutes, warm_up=warm_up, compiled=compiling):
                step_times.append(dt)
                if size_schedule(run, step_times, ddp):
                    if bar is not None:
                        bar.total = st["total_steps"]
                    if run.is_main and (warning := timing_warning(step_times)):
                        st["timing_warning"] = warning
                        say(warning)
            record.update(tok_s=tc.tokens_per_step * run.world / dt, tokens_seen=st["tokens_seen"], elapsed=st["elapsed"])
            if st["step"] % tc.log_every == 0 or st["step"] == 1:
                run.log(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['ce']:.3f}", ppl=f"{math.exp(min(record['ce'], 20)):.1f}", tok_s=f"{record['tok_s']:,.0f}",
                                epoch=f"{st['tokens_seen'] / (len(run.train_tokens) * run.world):.3f}", refresh=False)
                bar.update(1)
            stop_now = stop.signum is not None or (should_stop is not None and should_stop(st["step"]))
            if st["step"] % tc.eval_every == 0 and run.is_main:
                t0 = clock.now()
                if evaluate_and_save(run, spans, tokenizer, bar):
                    status = "early-stopped"
                st["periodic_eval_seconds"] = clock.now() - t0
                st["elapsed"] = clock.now() - t_start
            _share_clock(run, ddp)
            if ddp is not None:  # agree on stopping so no rank waits in all-reduce forever
                flag = torch.tensor([int(stop_now or status != "done")])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop_now = bool(flag.item())
            if stop_now:
                status = "interrupted" if stop.signum is not None else "stopped"
            if status != "done":
                break
    if bar is not None:
        bar.close()
    return finish(run, spans, status=status, signum=stop.signum, t_start=t_start)


def finish(run: Run, spans, *, status: str, signum: int | None, t_start: float) -> dict:
    """Evaluate the final weights (unless this step was just evaluated), save last/, summarise. A run by the clock that
    spent its budget is finished (its state's total_steps is set), so --resume refuses to extend it without --max-steps."""
    st = run.state
    if status == "done" and clock.by_time(run.tc):
        st["total_steps"] = st["step"]
    summary = {"status": status, "step": st["step"], "tokens_seen": st["tokens_seen"], "elapsed": st["elapsed"],
               "total_steps": st["total_steps"], "rank": run.rank, "world": run.world, "signal": signum,
               "bf16": run.tc.bf16, "compiled": run.compiled, "threads": torch.get_num_threads(), "weights_sha256": weights_digest(run.model)}
    if run.is_main:
        # last = the final weights; its val figure is the fixed-subset one at this step
        just_evaluated = st["step"] % run.tc.eval_every == 0 and st["step"] > 0 and "last_val" in st
        val_loss = st["last_val"] if just_evaluated else run_eval(run, spans)
        if not just_evaluated:
            log_eval(run, val_loss)
        if val_loss < st["best_val"]:
            st["best_val"] = val_loss
            save(run, "best", val_loss)
        save(run, "last", val_loss)
        summary["elapsed"] = clock.now() - t_start  # the closing evaluation and checkpoints included
        if run.tc.minutes is not None:
            summary["budget_used"] = summary["elapsed"] / (run.tc.minutes * 60)
        summary["val_ppl_subset_last"] = math.exp(val_loss)
        summary["val_ppl_subset_best"] = math.exp(st["best_val"])
    if run.world > 1:
        dist.barrier()
    return summary
