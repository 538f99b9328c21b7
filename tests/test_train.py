import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flashlm import checkpoint, compiled
from flashlm import train as train_mod
from flashlm.data import TokenData
from flashlm.evaluate import perplexity
from flashlm.model import FlashLMModel
from flashlm.recipes import TrainConfig, recipe_config
from flashlm_core.config import model_preset
from flashlm_core.errors import CheckpointError, ConfigError, TrainingDivergedError
from flashlm_core.versioned import FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[1]


def small_tc(**kw):
    base = dict(seq_len=32, micro_batch=4, grad_accum=2, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2, threads=2, dropout=0.1)
    return recipe_config("default", **{**base, **kw})


def metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_real_corpus_run_lowers_validation_loss(tiny_run, small_data):
    evals = [m for m in metrics(tiny_run) if m["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 300
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.5  # from ~ln(512)=6.2 to well below
    model, cfg = checkpoint.load_checkpoint(tiny_run / "best")
    full = perplexity(model, TokenData.open(small_data).val, seq_len=64)
    assert full["tokens"] == TokenData.open(small_data).val.size - 1  # every validation token counted once
    assert full["ppl"] < 60, full  # starts near 512 (uniform)
    assert cfg["format_version"] == FORMAT_VERSION and cfg["step"] == 300
    assert any("sample" in m for m in evals)


def test_checkpoint_roundtrip(tiny_run, tmp_path):
    model, cfg = checkpoint.load_checkpoint(tiny_run / "last")
    checkpoint.save_checkpoint(tmp_path / "copy", model, train_cfg=cfg["train"], tokenizer_path=tiny_run / "last" / "tokenizer.json", info={"step": 1})
    again, cfg2 = checkpoint.load_checkpoint(tmp_path / "copy")
    assert cfg2["model"] == cfg["model"] and cfg2["train"] == cfg["train"]
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp"))  # no temp folder left behind


@pytest.mark.parametrize("sampling", ["random", "epoch"])
def test_resume_continues_exactly(small_data, tmp_path, sampling):
    tc = small_tc(max_steps=10, sampling=sampling)
    full = train_mod.train(small_data, tmp_path / "a", model_preset("tiny"), tc, progress=False)
    part = train_mod.train(small_data, tmp_path / "b", model_preset("tiny"), tc, progress=False, should_stop=lambda step: step == 6)
    assert part["status"] == "stopped" and part["step"] == 6
    resumed = train_mod.train(small_data, tmp_path / "b", model_preset("tiny"), tc, progress=False, resume=True)
    assert resumed["step"] == 10
    losses = lambda run: [(m["step"], m["loss"]) for m in metrics(run) if m["kind"] == "train" and m["step"] > 6]
    assert losses(tmp_path / "a") == losses(tmp_path / "b") and losses(tmp_path / "a")
    assert full["weights_sha256"] == resumed["weights_sha256"]


def test_epoch_sampling_tiles_each_pass_once_at_a_fresh_offset():
    tc = small_tc(sampling="epoch")  # 8 windows of 32 a step
    n_tokens = 32 * 40 + 5  # 39 windows a pass: passes end mid-step
    stream = np.concatenate([train_mod.batch_starts(step, seed=3, rank=0, n_tokens=n_tokens, tc=tc).ravel() for step in range(20)])
    assert stream.min() >= 0 and stream.max() + tc.seq_len + 1 <= n_tokens  # every window and its next-token target fit
    passes = [stream[i * 39:(i + 1) * 39] for i in range(4)]
    for p in passes:
        offset = p[0] % tc.seq_len
        assert sorted(p) == list(range(offset, offset + 39 * 32, 32))  # one tiling, each window once
    assert len({tuple(p) for p in passes}) == 4  # a new order (and offset) each pass
    again = train_mod.batch_starts(7, seed=3, rank=0, n_tokens=n_tokens, tc=tc)
    assert again.ravel().tolist() == stream[56:64].tolist()  # a pure function of the step: resume sees the same data
    assert not np.array_equal(again, train_mod.batch_starts(7, seed=4, rank=0, n_tokens=n_tokens, tc=tc))
    with pytest.raises(ConfigError, match="--sampling random or more data"):
        train_mod.batch_starts(0, seed=3, rank=0, n_tokens=60, tc=tc)
    with pytest.raises(ConfigError, match="--sampling must be"):
        small_tc(sampling="shuffle")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    tc = small_tc(max_steps=12)
    real = train_mod.Objective.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets):
        calls["n"] += 1
        total, ce, fsp = real(self, idx, targets)
        return (total * float("nan"), ce, fsp) if calls["n"] > 2 * 9 else (total, ce, fsp)  # NaN from step 10

    monkeypatch.setattr(train_mod.Objective, "forward", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 9.*last good checkpoint"):
        train_mod.train(small_data, tmp_path, model_preset("tiny"), tc, progress=False)
    _, cfg = checkpoint.load_checkpoint(tmp_path / "last")
    assert cfg["step"] == 8  # the eval-time checkpoint before the NaN


def test_sigterm_writes_checkpoint_before_exit(small_data, tmp_path):
    cmd = [str(Path(sys.executable).parent / "flashlm-train"), "--data", str(small_data), "--out", str(tmp_path),
           "--preset", "tiny", "--max-steps", "100000", "--seq-len", "32", "--eval-every", "100000", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.2)
    while time.time() < deadline and sum(1 for m in metrics(tmp_path) if m["kind"] == "train") < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out)
    assert summary["status"] == "interrupted"
    _, cfg = checkpoint.load_checkpoint(tmp_path / "last")
    assert cfg["step"] == summary["step"] >= 10


def _free_port() -> int:
    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_nodes(small_data, outs, rendezvous, *args) -> list[dict]:
    """One torchrun a "machine" on loopback, each with its own run folder; their rank files, in rank order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(outs)), "--nproc-per-node", "1",
                               *rendezvous(node), str(ROOT / "tests" / "ddp_worker.py"), str(small_data), str(out), *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node, out in enumerate(outs)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    ranks = {}
    for out in outs:
        for path in out.glob("rank*.json"):
            ranks[int(path.stem[4:])] = json.loads(path.read_text())
            path.unlink()
    return [ranks[r] for r in sorted(ranks)]


def test_two_machines_train_and_resume_from_rank_0s_disk_alone(small_data, tmp_path):
    # torchrun --nnodes 2 --rdzv-backend c10d, as on two machines: each has its own disk (folder a/ or b/)
    port, outs = _free_port(), [tmp_path / "a", tmp_path / "b"]
    c10d = lambda node: ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "flashlm-test"]  # noqa: E731
    r0, r1 = _torchrun_nodes(small_data, outs, c10d)
    assert (r0["world"], r1["world"], r0["step"], r1["step"]) == (2, 2, 4, 4) and r0["weights_sha256"] == r1["weights_sha256"]
    home, other = sorted(outs, key=lambda out: not (out / "last").is_dir())  # rank 0 wrote the run; the other disk holds none
    assert not (other / "last").exists() and not (other / "metrics.jsonl").exists()
    _, cfg = checkpoint.load_checkpoint(home / "last")
    assert cfg["tokens_seen"] == 4 * 2 * 32 * 2 * 2  # steps * world * seq * micro * accum
    # resume on two machines: rank 1's disk has no last/, rank 0 sends it what it read
    port = _free_port()
    static = lambda node: ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]  # noqa: E731
    r0, r1 = _torchrun_nodes(small_data, [home, other], static, "6", "resume")
    assert (r0["step"], r1["step"]) == (6, 6) and r0["weights_sha256"] == r1["weights_sha256"]
    assert not [line for line in r0["said"] if line.startswith("resume:")]  # the same two ranks: nothing to say
    # and on one process: the run goes on, saying in one line that its data order changed
    said = []
    tc = dataclasses.replace(checkpoint.read_config(home / "last")["train"], max_steps=8)
    alone = train_mod.train(small_data, home, model_preset("tiny"), tc, progress=False, resume=True, log=said.append)
    assert alone["step"] == 8 and alone["world"] == 1
    assert [line for line in said if line.startswith("resume:")] == ["resume: saved by 2 rank(s), continued on 1; the data order from step 6 on differs from the uninterrupted run's"]


def test_resume_without_checkpoint_is_a_clear_error(small_data, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_mod.train(small_data, tmp_path, model_preset("tiny"), small_tc(max_steps=2), progress=False, resume=True)


def test_existing_run_is_never_overwritten_without_force(small_data, tmp_path):
    train_mod.train(small_data, tmp_path, model_preset("tiny"), small_tc(max_steps=2), progress=False)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--force"):
        train_mod.train(small_data, tmp_path, model_preset("tiny"), small_tc(max_steps=2), progress=False)
    train_mod.train(small_data, tmp_path, model_preset("tiny"), small_tc(max_steps=3), progress=False, force=True)
    assert [m["step"] for m in metrics(tmp_path) if m["kind"] == "eval"] == [0, 3]  # the old log is gone


def test_schedules_and_the_seed_rule():
    from flashlm.recipes import seed_schedule_steps

    tc = recipe_config("seed", minutes=30)
    assert tc.schedule_steps == seed_schedule_steps(30, 8192) == 2000 and tc.attn_dropout == 0.1 and tc.bf16 is False
    # the seed's script at its 800th step (30 min on 2 cores): the cosine over 2000 steps is still high
    assert 3.6e-4 < train_mod.lr_at(800, tc, tc.schedule_steps) < 3.8e-4
    assert recipe_config("seed", minutes=300).schedule_steps == 4394  # past 136 minutes the rule grows with the budget
    # the default holds the peak lr and decays over the last 20 % (round 3); round 2 (the bundled model) and round 1 used the cosine
    assert (recipe_config("default").schedule, recipe_config("default").decay_frac) == ("wsd", 0.2)
    assert recipe_config("round2").schedule == recipe_config("round1").schedule == "cosine"
    assert recipe_config("round2") == recipe_config("default", schedule="cosine", recipe="round2")
    wsd = recipe_config("default", lr=1e-3, min_lr=0.0, warmup_steps=10, schedule="wsd", decay_frac=0.2, max_steps=100)
    lrs = [train_mod.lr_at(s, wsd, 100) for s in range(100)]
    assert lrs[9] == 1e-3 and lrs[79] == 1e-3 and lrs[80] == 1e-3 and lrs[90] == pytest.approx(5e-4) and lrs[99] < 1e-4


def test_ema_weights_are_saved_and_resume_exactly(small_data, tmp_path):
    tc = small_tc(max_steps=8, ema=0.9)
    full = train_mod.train(small_data, tmp_path / "a", model_preset("tiny"), tc, progress=False)
    part = train_mod.train(small_data, tmp_path / "b", model_preset("tiny"), tc, progress=False, should_stop=lambda step: step == 5)
    assert part["step"] == 5
    resumed = train_mod.train(small_data, tmp_path / "b", model_preset("tiny"), tc, progress=False, resume=True)
    assert full["weights_sha256"] == resumed["weights_sha256"]  # the raw weights
    saved_a, _ = checkpoint.load_checkpoint(tmp_path / "a" / "last")
    saved_b, _ = checkpoint.load_checkpoint(tmp_path / "b" / "last")
    assert train_mod.weights_digest(saved_a) == train_mod.weights_digest(saved_b)  # the averaged weights
    assert train_mod.weights_digest(saved_a) != full["weights_sha256"]  # last/ holds the EMA, not the raw weights


def test_timing_warning_only_when_step_times_spread():
    assert train_mod.timing_warning([0.40, 0.42, 0.41, 0.45, 0.43]) is None
    line = train_mod.timing_warning([0.40, 0.41, 1.90, 0.42, 0.44])
    assert "0.40 s to 1.90 s" in line and "--max-steps" in line


def _started_train_process(small_data, tmp_path, env) -> tuple[str, str]:
    """(environ, maps) of a running flashlm-train once torch is loaded; the run is then stopped by SIGTERM."""
    cmd = [str(Path(sys.executable).parent / "flashlm-train"), "--data", str(small_data), "--out", str(tmp_path / "run"),
           "--preset", "tiny", "--seq-len", "64", "--max-steps", "100000", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "run" / "metrics.jsonl").is_file():  # torch loaded, training
            time.sleep(0.2)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace").split("\0")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    return environ, maps


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc (Linux)")
def test_flashlm_train_sets_thread_wait_policy_and_allocator(small_data, tmp_path):
    from flashlm.entry import TCMALLOC_GLOBS

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LD_PRELOAD", "FLASHLM_TCMALLOC")}
    environ, maps = _started_train_process(small_data, tmp_path / "a", env)
    assert "GOMP_SPINCOUNT=10000" in environ  # set before torch (libgomp) loaded
    tcmalloc_here = any(glob.glob(p) for p in TCMALLOC_GLOBS)
    assert ("libtcmalloc" in maps) == tcmalloc_here  # preloaded wherever the library is installed (make setup)
    # the user's own choices win: an exported wait policy, and FLASHLM_TCMALLOC=0 for the system allocator
    environ, maps = _started_train_process(small_data, tmp_path / "b", {**env, "OMP_WAIT_POLICY": "ACTIVE", "FLASHLM_TCMALLOC": "0"})
    assert "OMP_WAIT_POLICY=ACTIVE" in environ and not any(e.startswith("GOMP_SPINCOUNT") for e in environ)
    assert "libtcmalloc" not in maps


def test_threads_follow_the_free_cores():
    from flashlm_core.threads import busy_cores, choose_threads

    assert choose_threads(3, cores=2, busy=2.0) == (3, None)  # --threads wins
    assert choose_threads(None, cores=2, busy=0.1) == (2, None)  # idle: every core, nothing said
    assert choose_threads(None, cores=2, busy=None) == (2, None)  # cannot tell (not Linux)
    threads, line = choose_threads(None, cores=2, busy=1.0)
    assert threads == 1 and "--threads" in line
    assert choose_threads(None, cores=2, busy=3.7)[0] == 1  # never fewer than one
    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_compile_is_on_for_long_runs_where_a_compiler_exists(monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "g++")
    choose = lambda world=1, **kw: compiled.choose_compile(small_tc(bf16=True, **kw), world=world)[0]
    assert choose(max_steps=10) is False  # the compilation would not pay back
    assert choose(max_steps=compiled.COMPILE_MIN_STEPS) is True and choose(minutes=30) is True
    assert choose(minutes=30, world=2) is False  # not by default under torchrun
    assert choose(minutes=30, compile=False) is False and choose(max_steps=10, compile=True) is True
    assert compiled.choose_compile(small_tc(minutes=30, bf16=False))[0] is False  # fp32: no faster compiled
    assert compiled.choose_compile(small_tc(minutes=30, bf16=False, compile=True))[0] is True
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    on, line = compiled.choose_compile(small_tc(minutes=30, bf16=True))
    assert on is False and "install g++" in line
    for eager_anyway in (small_tc(max_steps=10, bf16=True), small_tc(minutes=30, bf16=False)):  # no compiler advice
        on, line = compiled.choose_compile(eager_anyway)
        assert on is False and "install g++" not in line
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        compiled.choose_compile(small_tc(max_steps=10, compile=True))


def test_a_failing_compile_falls_back_to_the_same_eager_step(small_data, tmp_path, monkeypatch):
    eager = train_mod.train(small_data, tmp_path / "eager", model_preset("tiny"), small_tc(max_steps=3, compile=False), progress=False)

    def broken(fn):  # draws a micro-batch's dropout masks, then fails as a compiler error would
        def call(*args):
            fn(*args)
            raise RuntimeError("CppCompileError: cc1plus: fatal error: killed")
        return call

    monkeypatch.setattr(train_mod, "compile_step", broken)
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "g++")
    lines = []
    run = train_mod.train(small_data, tmp_path / "broken", model_preset("tiny"), small_tc(max_steps=3, compile=True),
                          progress=False, log=lines.append)
    assert "compile: failed (RuntimeError: CppCompileError: cc1plus: fatal error: killed); training eagerly (--no-compile skips the attempt)" in lines
    assert run["status"] == "done" and run["compiled"] is False
    assert run["weights_sha256"] == eager["weights_sha256"]  # the failed attempt left nothing behind

    # in a --minutes run, the step that tried to compile (and then ran eagerly) does not size the schedule
    samples = []
    timing = train_mod.timing_sample
    monkeypatch.setattr(train_mod, "timing_sample", lambda *a, **k: samples.append(k) or timing(*a, **k))
    train_mod.train(small_data, tmp_path / "broken-minutes", model_preset("tiny"), small_tc(minutes=0.02, compile=True, schedule_clock="steps"),
                    progress=False)
    assert samples[0] == {"warm_up": True, "compiled": True} and all(not s["warm_up"] for s in samples[1:])
    # by the clock, the compiling step's time is not taken as what the next step will cost
    noted = []
    monkeypatch.setattr(train_mod.clock, "note_step", lambda state, seconds: noted.append(state["step"]))
    train_mod.train(small_data, tmp_path / "broken-clock", model_preset("tiny"), small_tc(minutes=0.05, compile=True), progress=False)
    assert noted and 1 not in noted


@pytest.mark.skipif(compiled.cxx_compiler() is None, reason="torch.compile needs a C++ compiler")
def test_the_compiled_step_computes_the_eager_step(small_data, tmp_path):
    runs = {c: train_mod.train(small_data, tmp_path / str(c), model_preset("tiny"), small_tc(max_steps=3, compile=c), progress=False)
            for c in (False, True)}
    assert runs[True]["compiled"] is True and runs[False]["compiled"] is False
    # step 1's training loss and the validation loss after 3 updates: the same dropout masks (torch's randint,
    # not inductor's RNG) and the same gradients give the same numbers up to fused rounding
    losses = {c: [m.get("loss", m.get("val_loss")) for m in metrics(tmp_path / str(c)) if m["step"] in (1, 3)] for c in runs}
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_the_compiling_step_never_sizes_a_minutes_schedule():
    # 10 minutes: 3 % is 18 s, so a 40 s compile step would be taken as a sample and size the schedule alone
    assert train_mod.timing_sample(40.0, 10, warm_up=True, compiled=True) is False
    assert train_mod.timing_sample(40.0, 10, warm_up=True, compiled=False) is True  # eager: a slow machine's real step
    assert train_mod.timing_sample(1.0, 10, warm_up=True, compiled=False) is False  # eager warm-up
    assert train_mod.timing_sample(0.3, 10, warm_up=False, compiled=True) is True


def test_the_clock_schedule_warms_up_by_steps_holds_then_decays_to_the_end_of_the_budget():
    tc = small_tc(minutes=10, warmup_steps=4, lr=1e-3, min_lr=1e-5, decay_frac=0.2)
    state = {"eval_seconds": 10.0, "save_seconds": 5.0, "warmup_end_s": 3.0}  # the last step must end by 600 - 20 s
    lr = lambda step, elapsed: train_mod.clock.lr_by_time(step, elapsed, tc, state)  # noqa: E731
    assert [lr(s, 0.0) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr(10, 0.8 * 580 - 1) == 1e-3 and lr(10, 0.9 * 580) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr(10, 580) == lr(10, 700) == pytest.approx(1e-5)
    cosine = small_tc(minutes=10, warmup_steps=4, lr=1e-3, min_lr=1e-5, schedule="cosine")
    assert train_mod.clock.lr_by_time(10, 3.0 + (580 - 3.0) / 2, cosine, state) == pytest.approx((1e-3 + 1e-5) / 2)
    assert train_mod.clock.by_time(tc) and not train_mod.clock.by_time(small_tc(minutes=10, schedule_clock="steps"))
    assert not train_mod.clock.by_time(small_tc(minutes=10, max_steps=50)) and not train_mod.clock.by_time(recipe_config("seed", minutes=30))


class SimClock:
    """The run's clock driven by the test: a step, an evaluation and a checkpoint each take the seconds set here."""

    def __init__(self, monkeypatch, *, step_seconds, eval_seconds=0.1, save_seconds=0.02):
        self.t = 0.0
        step, evaluate, save = train_mod.optimizer_step, train_mod.run_eval, train_mod.checkpoint.save_checkpoint

        def timed(fn, seconds):
            def run(*args, **kw):
                self.t += seconds() if callable(seconds) else seconds
                return fn(*args, **kw)
            return run

        monkeypatch.setattr(train_mod.clock, "now", lambda: self.t)
        monkeypatch.setattr(train_mod, "optimizer_step", timed(step, step_seconds))
        monkeypatch.setattr(train_mod, "run_eval", timed(evaluate, eval_seconds))
        monkeypatch.setattr(train_mod.checkpoint, "save_checkpoint", timed(save, save_seconds))


def test_a_minutes_run_spends_its_budget_when_the_cpu_changes_speed(small_data, tmp_path, monkeypatch):
    # a laptop slowing down and speeding up: a step takes 60 ms through the budget's first and third fifths, 20 ms else
    budget = 0.2 * 60
    sim = SimClock(monkeypatch, step_seconds=lambda: 0.06 if int(5 * sim.t / budget) in (0, 2) else 0.02)
    tc = small_tc(minutes=0.2, eval_every=40, threads=1, log_every=1)
    summary = train_mod.train(small_data, tmp_path / "run", model_preset("tiny"), tc, progress=False)
    # it ends inside the budget, short of it by less than one slow step and one periodic evaluation with its checkpoints
    assert summary["status"] == "done" and 1 - (0.06 + 0.1 + 2 * 0.02) / budget <= summary["budget_used"] <= 1, summary
    lrs = [m["lr"] for m in metrics(tmp_path / "run") if m["kind"] == "train"]
    assert max(lrs) == tc.lr and lrs[-1] < 0.1 * tc.lr  # held at the peak, then decayed by the end of the budget
    with pytest.raises(ConfigError, match="already finished"):  # a spent budget is a finished run
        train_mod.train(small_data, tmp_path / "run", model_preset("tiny"), tc, progress=False, resume=True)


def test_a_clock_run_resumes_where_it_stopped(small_data, tmp_path, monkeypatch):
    SimClock(monkeypatch, step_seconds=0.03)
    tc = small_tc(minutes=0.1, eval_every=20, threads=1)
    part = train_mod.train(small_data, tmp_path / "run", model_preset("tiny"), tc, progress=False, should_stop=lambda step: step == 10)
    assert part["status"] == "stopped" and part["step"] == 10
    rest = train_mod.train(small_data, tmp_path / "run", model_preset("tiny"), tc, progress=False, resume=True)
    assert rest["status"] == "done" and rest["step"] > 10 and 1 - (0.03 + 0.1 + 2 * 0.02) / 6 <= rest["budget_used"] <= 1, rest
    _, cfg = checkpoint.load_checkpoint(tmp_path / "run" / "last")
    assert cfg["train"].schedule_clock == "time" and cfg["step"] == rest["step"]


def test_short_run_recipe_takes_the_knobs_left_at_their_defaults(monkeypatch):
    import dataclasses

    from flashlm import probe
    from flashlm.recipes import SHORT_RUN, SHORT_RUN_TOKENS, TrainConfig, short_run_config

    short = short_run_config(TrainConfig(minutes=30))
    assert short.short_run is True and all(getattr(short, k) == v for k, v in SHORT_RUN.items())
    assert short.tokens_per_step == TrainConfig().tokens_per_step  # the same windows a step
    kept = short_run_config(TrainConfig(minutes=30, dropout=0.2))  # a value the user chose stays; with dropout, so does the batch shape
    assert (kept.dropout, kept.micro_batch, kept.grad_accum) == (0.2, TrainConfig().micro_batch, TrainConfig().grad_accum)
    for chosen in ({"grad_accum": 8}, {"micro_batch": 2}, {"attn_dropout": 0.1}):  # a batch knob chosen, or dropout left: the pair stays as set
        kept = short_run_config(TrainConfig(minutes=30, **chosen))
        assert kept.dropout == 0 and (kept.micro_batch, kept.grad_accum) == (chosen.get("micro_batch", TrainConfig().micro_batch), chosen.get("grad_accum", TrainConfig().grad_accum))
    cfg = model_preset("tiny")
    rate = SHORT_RUN_TOKENS / (30 * 60)  # tokens/s at which 30 minutes buy exactly the threshold
    monkeypatch.setattr(probe, "tokens_per_second", lambda model_cfg, tc, gemms: {g: rate * 0.99 for g in gemms})
    assert TrainConfig().short_run is None  # auto by default: a --minutes run's probe decides
    tc, lines, _ = probe.adapt(cfg, TrainConfig(minutes=30, bf16=False, gemm="auto"))
    assert tc.short_run is True and tc.dropout == SHORT_RUN["dropout"] != TrainConfig().dropout and tc.gemm == "torch"  # equal speed: torch's
    assert lines[0].startswith("gemm: torch") and lines[1].startswith("short run: on")
    monkeypatch.setattr(probe, "tokens_per_second", lambda model_cfg, tc, gemms: {g: rate for g in gemms})
    tc, lines, _ = probe.adapt(cfg, TrainConfig(minutes=30, bf16=True))  # bf16: no GEMM choice to make
    assert tc == TrainConfig(minutes=30, bf16=True, short_run=False, gemm="torch") and lines == [lines[0]]
    assert lines[0].startswith("short run: off")
    for untouched in (TrainConfig(max_steps=100), TrainConfig(minutes=30, bf16=True, short_run=False), recipe_config("seed", minutes=30),
                      TrainConfig(minutes=30, max_steps=100)):
        assert probe.adapt(cfg, untouched) == (dataclasses.replace(untouched, gemm="torch"), [], 0.0)
    assert probe.adapt(cfg, TrainConfig(max_steps=100, short_run=True))[0] == short_run_config(TrainConfig(max_steps=100, gemm="torch"))


def test_a_tiny_budget_halves_the_batch_with_the_same_warm_up_in_tokens(monkeypatch):
    from flashlm import probe
    from flashlm.recipes import SHORT_RUN_TOKENS, TINY_RUN, TINY_RUN_TOKENS, TrainConfig, short_run_config

    tiny = short_run_config(TrainConfig(minutes=30), tiny=True)
    assert all(getattr(tiny, k) == v for k, v in TINY_RUN.items()) and tiny.grad_accum == 1 and tiny.dropout == 0
    short = short_run_config(TrainConfig(minutes=30))
    assert tiny.warmup_steps * tiny.tokens_per_step == short.warmup_steps * short.tokens_per_step  # the warm-up's tokens stay
    kept = short_run_config(TrainConfig(minutes=30, grad_accum=8), tiny=True)  # a batch the user chose keeps its warm-up and evals
    assert (kept.micro_batch, kept.grad_accum, kept.warmup_steps, kept.eval_every) == (
        TrainConfig().micro_batch, 8, TrainConfig().warmup_steps, TrainConfig().eval_every)
    assert short_run_config(TrainConfig(minutes=30, warmup_steps=50), tiny=True).warmup_steps == 50
    for budget_tokens, micro_batch, under in ((TINY_RUN_TOKENS * 0.99, TINY_RUN["micro_batch"], TINY_RUN_TOKENS),
                                              (TINY_RUN_TOKENS * 1.01, short.micro_batch, SHORT_RUN_TOKENS)):
        monkeypatch.setattr(probe, "tokens_per_second", lambda model_cfg, tc, gemms, r=budget_tokens / 1800: {g: r for g in gemms})
        tc, lines, _ = probe.adapt(model_preset("tiny"), TrainConfig(minutes=30, bf16=True))
        assert tc.short_run is True and tc.micro_batch == micro_batch and f"under {under / 1e6:g}M" in lines[0]


def test_the_probe_keeps_numpys_blas_only_when_it_is_clearly_faster(monkeypatch):
    from flashlm import probe
    from flashlm.recipes import TrainConfig

    for numpy_over_torch, kept in ((probe.GEMM_MARGIN + 0.02, "numpy"), (probe.GEMM_MARGIN - 0.02, "torch")):
        monkeypatch.setattr(probe, "tokens_per_second", lambda model_cfg, tc, gemms, r=numpy_over_torch: {"torch": 1e5, "numpy": r * 1e5})
        tc, lines, _ = probe.adapt(model_preset("tiny"), TrainConfig(minutes=30, bf16=False, short_run=False, gemm="auto"))
        assert tc.gemm == kept and lines[0].startswith(f"gemm: {kept}")
    forced = TrainConfig(minutes=30, bf16=False, short_run=False, gemm="numpy")
    assert probe.adapt(model_preset("tiny"), forced) == (forced, [], 0.0)  # nothing left to probe


def test_numpys_blas_computes_torchs_linear_and_head_loss_with_their_gradients():
    from flashlm import blas
    from flashlm.head_loss import head_cross_entropy

    torch.manual_seed(0)
    x, w = torch.randn(3, 40, 24, requires_grad=True), torch.randn(16, 24, requires_grad=True)
    h, emb, tgt = torch.randn(2, 300, 24, requires_grad=True), torch.randn(50, 24, requires_grad=True), torch.randint(0, 50, (2, 300))
    results = {}
    for on in (False, True):
        with blas.using(on):
            y = blas.linear(x, w)
            loss = (y * y).sum() + head_cross_entropy(h, emb, tgt)
            results[on] = [y, *torch.autograd.grad(loss, (x, w, h, emb))]
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # the same sums in another order
    with blas.using(True), torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast it stays torch's bf16 linear
        assert blas.linear(x, w).dtype == torch.bfloat16
    with blas.using(True):  # an ONNX export traces the model: the trace must hold a plain MatMul, not numpy
        traced = torch.jit.trace(blas.linear, (x.detach(), w.detach()))
    assert "numpy" not in str(traced.graph) and any(n.kind() in ("aten::linear", "aten::matmul") for n in traced.graph.nodes())


def test_the_probe_times_the_real_step_and_leaves_the_runs_randomness_alone():
    from flashlm import probe

    torch.manual_seed(3)
    state = torch.get_rng_state()
    rates = probe.tokens_per_second(model_preset("tiny"), small_tc(minutes=1, bf16=False), gemms=("torch", "numpy"))
    assert set(rates) == {"torch", "numpy"} and all(0 < r < float("inf") for r in rates.values())
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("decay_on", ["all", "matrices"])
def test_weight_decay_on_matrices_leaves_the_norms_gains_undecayed(decay_on):
    torch.manual_seed(0)
    model = FlashLMModel(model_preset("tiny"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # AdamW's update is then its decay alone: p (1 - lr wd)
    opt = train_mod.make_optimizer(model, TrainConfig(lr=0.01, weight_decay=0.5, weight_decay_on=decay_on))
    opt.step()
    for n, p in model.named_parameters():
        decayed = decay_on == "all" or p.ndim >= 2
        assert torch.allclose(p.detach(), before[n] * (0.995 if decayed else 1.0)), n
    assert any(p.ndim < 2 for p in model.parameters()) and any(p.ndim >= 2 for p in model.parameters())


def test_weight_decay_on_is_checked_before_training():
    with pytest.raises(ConfigError, match="--weight-decay-on must be 'all' or 'matrices'"):
        TrainConfig(weight_decay_on="norms")
    with pytest.raises(ConfigError, match="--optimizer adamw"):
        TrainConfig(weight_decay_on="matrices", optimizer="muon")
