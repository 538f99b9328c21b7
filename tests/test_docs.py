"""The generated parts of MODEL_CARD.md and docs/ are what results/ gives today (python bench/report.py, and the
AVX2 page by python bench/budget_pair.py table)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_blocks_match_the_results_files():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout


def test_the_avx2_page_matches_its_results_files():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "budget_pair.py"), "table", "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout


def test_a_changed_results_file_makes_its_block_stale(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import report

    card = tmp_path / "card.md"
    card.write_text(f"intro\n{report.begin('card-model')}\nold text\n{report.end('card-model')}\nrest\n")
    monkeypatch.setattr(report, "BLOCKS", {card: {"card-model": lambda: "new text"}})
    (old, new), = report.render().values()
    assert old != new and new == f"intro\n{report.begin('card-model')}\nnew text\n{report.end('card-model')}\nrest\n"


def test_a_run_made_against_a_seed_run_pairs_only_with_it():
    sys.path.insert(0, str(ROOT / "bench"))
    import budget_pair

    def ours(name, seed, bpb, against=None):
        return {"side": "default", "name": name, "seed": seed, "default_bpb": bpb, "steps": 10, "tokens_seen": 1e6, "budget_used": 1.0,
                "run_command": "flashlm-train", "said": [], "cpu": "cpu A", "cpu_flags": [], "commit": "c",
                **({"against": against} if against else {})}

    def theirs(name, torch_seed, bpb):
        return {"side": "seed", "name": name, "torch_seed": torch_seed, "seed_bpb": bpb, "seed_steps": 5, "run_command": "seed", "cpu": "cpu A"}

    unnamed = {k: v for k, v in theirs(None, 0, 1.0).items() if k != "name"}  # a seed-side record from before --name was kept
    records = [ours("old", 1337, 0.9), ours("new", 1337, 0.8, "seed-new"), ours("new", 7, 0.7, "seed-new"),
               unnamed, theirs("seed-new", 0, 1.2), theirs("seed-new", 1, 1.1)]
    pairs, rows = budget_pair.pair_rows(records)
    met = {(p["name"], p["seed"]): (p["torch_seed"], p["seed_bpb"]) for p in pairs}
    assert met == {("old", 1337): (0, 1.0), ("new", 7): (0, 1.2), ("new", 1337): (1, 1.1)} and len(rows) == 3


def test_host_steps_the_seed_by_its_measured_speed_and_keeps_what_another_machine_wrote(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import budget_pair

    speed = {"variants": [{"variant": "flashlm default", "tok_s": 9000.0}, {"variant": "seed's script (train_v10_fsp.py)", "tok_s": 3207.69}]}
    assert budget_pair.seed_steps_bought(speed, minutes=30) == 704  # 1,800 s x 3,207.69 tok/s / 8,192 tokens a step
    monkeypatch.setattr(budget_pair, "ROOT", tmp_path)
    monkeypatch.setattr(budget_pair, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "m-s1337.json").write_text(json.dumps({"cpu": "cpu A"}))
    files = budget_pair.host_files(argparse.Namespace(name="m", seeds=[1337, 7], torch_seeds=[0, 1]))
    with pytest.raises(SystemExit, match="m-s1337.json exists: pass --resume"):
        budget_pair.host_done(files, resume=False, cpu="cpu A")
    with pytest.raises(SystemExit, match="written on cpu A, this is cpu B: a pair never crosses machines"):
        budget_pair.host_done(files, resume=True, cpu="cpu B")
    assert budget_pair.host_done(files, resume=True, cpu="cpu A") == {"default 1337"}
