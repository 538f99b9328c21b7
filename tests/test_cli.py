import json
import subprocess
import sys
from pathlib import Path

import click

from flashlm import checkpoint
from flashlm.recipes import recipe_config
from flashlm.train import train
from flashlm_core.config import model_preset

BIN = Path(sys.executable).parent

NO_TORCH = """
import sys
sys.modules["torch"] = None
from flashlm.cli import {cmd}
{cmd}.main({args!r})
"""


def test_missing_extra_is_one_line_naming_the_extra(tmp_path):
    for cmd, args in (("train_cmd", ["--max-steps", "1"]), ("prepare_cmd", [str(tmp_path)]), ("eval_cmd", [str(tmp_path)])):
        r = subprocess.run([sys.executable, "-c", NO_TORCH.format(cmd=cmd, args=args)], capture_output=True, text=True)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == ["error: this command needs the 'train' extra (torch is missing): pip install 'flashlm[train]'"]


def test_minutes_budget_sizes_the_schedule_from_measured_steps(small_data, tmp_path):
    tc = recipe_config("default", seq_len=32, micro_batch=2, grad_accum=1, minutes=0.1, eval_every=50, eval_batches=2, threads=1, warmup_steps=2,
                       schedule_clock="steps")
    summary = train(small_data, tmp_path, model_preset("tiny"), tc, progress=False)
    assert summary["total_steps"] is not None and summary["total_steps"] > 6  # derived after the timing steps
    assert summary["status"] == "done" and 6 < summary["step"] <= summary["total_steps"]
    _, cfg = checkpoint.load_checkpoint(tmp_path / "last")
    assert cfg["step"] == summary["step"]


def test_prepare_train_eval_commands(corpus_dir, tmp_path):
    data = tmp_path / "data"
    r = subprocess.run([str(BIN / "flashlm-prepare"), str(corpus_dir), "--out", str(data), "--vocab-size", "300"], capture_output=True, text=True)
    assert r.returncode == 0 and "written; vocab 300" in r.stdout, r.stderr
    r = subprocess.run([str(BIN / "flashlm-prepare"), str(corpus_dir), "--out", str(data), "--vocab-size", "300"], capture_output=True, text=True)
    assert "unchanged" in r.stdout
    r = subprocess.run([str(BIN / "flashlm-train"), "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "3",
                        "--seq-len", "32", "--eval-every", "2", "--quiet", "--threads", "1", "--dropout", "0.1", "--no-bf16"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["step"] == 3 and summary["val_full_best"]["tokens"] > 100_000
    _, cfg = checkpoint.load_checkpoint(tmp_path / "run" / "last")
    assert cfg["train"].dropout == 0.1 and cfg["train"].bf16 is False and cfg["train"].recipe == "default"
    r = subprocess.run([str(BIN / "flashlm-eval"), str(tmp_path / "run" / "best"), "--data", str(data), "--samples", "1"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["tokens"] == summary["val_full_best"]["tokens"]
    assert "--- 'Once upon a time'" in r.stdout
    r = subprocess.run([str(BIN / "flashlm-train"), "--data", str(tmp_path / "nothing"), "--max-steps", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and "run flashlm-prepare first" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(BIN / "flashlm-train"), "--data", str(data), "--recipe", "turbo"], capture_output=True, text=True)
    assert r.returncode == 2 and "turbo" in r.stderr


def test_every_option_of_train_import_export_and_serve_has_a_description():
    from flashlm.cli import import_cmd, train_cmd
    from flashlm_export.cli import export_cmd
    from flashlm_runtime.serve_cli import serve_cmd

    for cmd in (train_cmd, import_cmd, export_cmd, serve_cmd):
        bare = [p.name for p in cmd.params if isinstance(p, click.Option) and not (p.help or "").strip(" ()").replace("default:", "").strip()]
        assert not bare, f"{cmd.name}: options without a description: {bare}"
        assert all(not (p.help or "").startswith("(default") for p in cmd.params if isinstance(p, click.Option)), cmd.name


def test_every_option_of_every_command_says_what_it_does():
    import importlib
    import re

    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    launched = []
    for entry in scripts.values():  # each console script launches module:command (flashlm_core.entry.launch)
        module, func = entry.split(":")
        source = Path(importlib.import_module(module).__file__).read_text()
        body = source[source.index(f"def {func}("):]
        launched += re.findall(r'launch\("([\w.]+)", "(\w+)"\)', body)[:1]
    assert len(launched) == len(scripts), launched
    for module, command in launched:
        cmd = getattr(importlib.import_module(module), command)
        silent = [p.name for p in cmd.params if isinstance(p, click.Option) and p.name != "help" and not (p.help or "").strip()]
        assert not silent, f"{module}.{command}: options without help: {silent}"
