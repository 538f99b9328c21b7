"""The generated parts of MODEL_CARD.md and docs/ are what results/ gives today (python bench/report.py, and the
AVX2 page by python bench/budget_pair.py table)."""
import subprocess
import sys
from pathlib import Path

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
