"""flashlm-import against the seed's own code (its GPT_FSP, loaded unchanged from ../shared/seed), and
flashlm-train --init-from: a new run from a checkpoint's weights, with its tokenizer checked by content."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from flashlm.checkpoint import load_checkpoint
from flashlm.importer import import_seed
from flashlm_core.errors import CheckpointError, ConfigError, DataError
from flashlm_core.tokenizer_identity import tokenizer_difference
from flashlm_runtime.manifest import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
SEED_SCRIPT = ROOT.parent / "shared" / "seed" / "train_v10_fsp.py"
TOKENIZER = DEFAULT_MODEL_DIR / "tokenizer.json"  # a BPE-4096 with <|endoftext|>, as the seed's data_v10/tokenizer.json
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def seed():
    """train_v10_fsp.py as a module, unchanged (it sets torch's threads to 4 at import: put back)."""
    if not SEED_SCRIPT.is_file():
        pytest.fail(f"the seed's script is not at {SEED_SCRIPT}")
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("seed_v10", SEED_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(threads)
    return module


@pytest.fixture(scope="module")
def seed_model(seed):
    """GPT_FSP with weights far from its init (so that logits are O(1) and every tensor matters), eval mode."""
    torch.manual_seed(0)
    m = seed.GPT_FSP(4096, 256, 512, 8, 4)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def seed_file(seed_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "fsp_best.pt"
    torch.save({"model": seed_model.state_dict(), "step": 60, "val_ppl": 123.4}, path)  # the script's own format
    return path


@pytest.fixture(scope="module")
def imported(seed_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "ckpt"
    import_seed(seed_file, tokenizer=TOKENIZER, out=out)
    return out


def _seed_forward(m, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's logits and FSP logits, computed as its forward does (which returns only losses)."""
    h = m.drop(m.embed(ids))
    for block in m.blocks:
        h = block(h)
    h = m.ln_f(h)
    pos = torch.arange(0, ids.shape[1] - 64, 16)
    return F.linear(h, m.embed.weight), F.linear(m.fsp_proj(h[:, pos]), m.embed.weight)


@torch.no_grad()
def test_imported_weights_give_the_seeds_logits_and_fsp_logits(seed_model, imported, seed_file, corpus_dir):
    tok = Tokenizer.from_file(str(TOKENIZER))
    ids = torch.tensor(tok.encode((corpus_dir / "valid.txt").read_text()[:20_000]).ids[:512]).view(2, 256)
    want_logits, want_fsp = _seed_forward(seed_model, ids)
    model, cfg = load_checkpoint(imported, attention="manual")  # the seed's formulation: explicit masked softmax
    logits, hidden, _ = model(ids)
    fsp = model.fsp_logits(hidden[:, torch.arange(0, 256 - 64, 16)])
    assert want_logits.abs().max() > 1  # the comparison is of real numbers, not of near-zero logits
    assert (logits - want_logits).abs().max() <= 1e-5 and (fsp - want_fsp).abs().max() <= 1e-5
    provenance = cfg["imported"]
    assert provenance["sha256"] == hashlib.sha256(seed_file.read_bytes()).hexdigest()
    assert (provenance["step"], provenance["seed_val_ppl"], cfg["step"]) == (60, 123.4, 60)
    assert tokenizer_difference(imported / "tokenizer.json", TOKENIZER) is None


def test_a_bare_state_dict_named_best_pt_imports_too(seed_model, tmp_path):
    path = tmp_path / "best.pt"
    torch.save(seed_model.state_dict(), path)
    provenance = import_seed(path, tokenizer=TOKENIZER, out=tmp_path / "out")
    assert provenance["step"] is None and (tmp_path / "out" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        import_seed(path, tokenizer=TOKENIZER, out=tmp_path / "out")


def _broken(seed_model, change) -> dict:
    state = {k: v.clone() for k, v in seed_model.state_dict().items()}
    change(state)
    return {"model": state, "step": 1, "val_ppl": 2.0}


BAD_CHECKPOINTS = [
    (lambda s: s.pop("blocks.2.ffn.up.weight"), "missing tensors \\['blocks.2.ffn.up.weight'\\]"),
    (lambda s: s.update({"blocks.0.attn.bias": torch.zeros(3)}), "unknown tensors \\['blocks.0.attn.bias'\\]"),
    (lambda s: s.update({"blocks.1.attn.out.weight": torch.zeros(256, 128)}), "blocks.1.attn.wo.weight has shape \\(256, 128\\)"),
    (lambda s: s["fsp_proj.weight"].__setitem__((0, 0), float("nan")), "fsp_proj.weight holds NaN or Inf"),
    (lambda s: s.update({"blocks.3.attn.inv_freq": s["blocks.3.attn.inv_freq"] * 2}), "inv_freq is not RoPE theta 10000"),
]


@pytest.mark.parametrize("change, message", BAD_CHECKPOINTS)
def test_a_damaged_seed_checkpoint_is_one_named_error_and_writes_nothing(seed_model, tmp_path, change, message):
    path = tmp_path / "fsp_best.pt"
    torch.save(_broken(seed_model, change), path)
    with pytest.raises(CheckpointError, match=message):
        import_seed(path, tokenizer=TOKENIZER, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizers_and_pickles_are_checked(seed_file, small_data, tmp_path):
    with pytest.raises(CheckpointError, match="512 tokens, but the checkpoint's embedding has 4096 rows"):
        import_seed(seed_file, tokenizer=small_data / "tokenizer.json", out=tmp_path / "a")
    no_eot = json.loads(TOKENIZER.read_text())
    no_eot["added_tokens"] = []
    vocab = no_eot["model"]["vocab"]
    vocab["<|notend|>"] = vocab.pop("<|endoftext|>")
    (tmp_path / "tok.json").write_text(json.dumps(no_eot))
    with pytest.raises(CheckpointError, match="no <\\|endoftext\\|> token"):
        import_seed(seed_file, tokenizer=tmp_path / "tok.json", out=tmp_path / "b")
    torch.save({"model": {}, "payload": argparse.Namespace(x=1)}, tmp_path / "code.pt")  # not loadable weights-only
    with pytest.raises(CheckpointError, match="not a weights-only torch checkpoint"):
        import_seed(tmp_path / "code.pt", tokenizer=TOKENIZER, out=tmp_path / "c")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = subprocess.run([str(BIN / "flashlm-import"), str(tmp_path / "junk.pt"), "--tokenizer", str(TOKENIZER), "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def data4096(corpus_dir, tmp_path_factory) -> Path:
    """The TinyStories sample tokenized with the 4096 tokenizer (flashlm-prepare --tokenizer)."""
    from flashlm.data import prepare

    out = tmp_path_factory.mktemp("data4096")
    prepare(str(corpus_dir), out, tokenizer_path=str(TOKENIZER))
    return out


def test_the_imported_checkpoint_exports_with_its_provenance(imported, data4096, tmp_path):
    from flashlm_export.exporter import export

    manifest = export(imported, tmp_path / "export", data_dir=str(data4096), log=lambda *_: None)
    assert manifest["source"]["imported"]["step"] == 60 and manifest["source"]["step"] == 60
    report = manifest["validation"]
    assert report["fp32_vs_torch"]["max_abs_prefill"] <= 1e-4 and report["fp32_vs_torch"]["max_abs_decode"] <= 1e-4


# ---- --init-from ---------------------------------------------------------------------------------------

def _tiny_config(**overrides):
    from flashlm.recipes import recipe_config

    knobs = dict(seq_len=64, micro_batch=8, grad_accum=1, lr=1e-4, warmup_steps=1, max_steps=3, eval_every=100, eval_batches=4,
                 threads=2, dropout=0.0)
    return recipe_config("default", **{**knobs, **overrides})


def test_init_from_starts_a_new_run_from_the_checkpoints_weights(tiny_run, small_data, tmp_path):
    from flashlm.train import train
    from flashlm_core.config import model_preset

    out = tmp_path / "ft"
    train(small_data, out, model_preset("v10-fsp"), _tiny_config(init_from=str(tiny_run / "best")), progress=False)
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    best_step = load_checkpoint(tiny_run / "best")[1]["step"]
    # the new run's step-0 evaluation (same subset: same seq_len and eval_batches) is the source's at its best step
    start = next(m for m in first if m["kind"] == "eval")
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(next(m["val_loss"] for m in source if m["kind"] == "eval" and m["step"] == best_step), rel=1e-5)
    model, cfg = load_checkpoint(out / "last")
    assert model.cfg == load_checkpoint(tiny_run / "best")[0].cfg  # the checkpoint's architecture, not the preset's
    assert cfg["init_from"]["path"] == str((tiny_run / "best").resolve()) and cfg["train"].init_from == str(tiny_run / "best")
    assert cfg["step"] == 3  # its own schedule and step count, from 0


def test_init_from_refuses_data_of_another_tokenizer(tiny_run, small_data, data4096, corpus_dir, tmp_path):
    from flashlm.data import prepare
    from flashlm.train import train
    from flashlm_core.config import model_preset

    with pytest.raises(DataError, match="vocabulary of 4096 tokens, but --init-from .* has 512.*flashlm-prepare TEXT --tokenizer"):
        train(data4096, tmp_path / "a", model_preset("v10-fsp"), _tiny_config(init_from=str(tiny_run / "best")), progress=False)
    other = tmp_path / "corpus"
    other.mkdir()
    (other / "train.txt").write_text((corpus_dir / "train.txt").read_text()[:300_000])
    shutil.copyfile(corpus_dir / "valid.txt", other / "valid.txt")
    prepare(str(other), tmp_path / "data512b", vocab_size=512)  # the same size, other merges
    with pytest.raises(DataError, match="prepared with another tokenizer .*vocabularies differ"):
        train(tmp_path / "data512b", tmp_path / "b", model_preset("v10-fsp"), _tiny_config(init_from=str(tiny_run / "best")), progress=False)
    with pytest.raises(ConfigError, match="seq_len 256 exceeds the model's max_seq_len 128"):
        train(small_data, tmp_path / "c", model_preset("v10-fsp"), _tiny_config(init_from=str(tiny_run / "best"), seq_len=256), progress=False)
    r = subprocess.run([str(BIN / "flashlm-train"), "--data", str(small_data), "--out", str(tmp_path / "d"), "--init-from",
                        str(tiny_run / "best"), "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--preset and --init-from both set the model" in r.stderr and "Traceback" not in r.stderr


def test_init_from_default_fine_tunes_the_shipped_checkpoint(data4096, tmp_path):
    """models/flashlm-v10-fsp: the fp32 weights every shipped export was made from, which --init-from default names."""
    from flashlm.train import DEFAULT_CHECKPOINT, train
    from flashlm_core.config import model_preset

    shipped, cfg = load_checkpoint(DEFAULT_CHECKPOINT)
    assert shipped.cfg.n_params == 3_737_856 and all(t.dtype == torch.float32 for t in shipped.state_dict().values())
    digest = hashlib.sha256((DEFAULT_CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())["source"]["weights_sha256"] == digest
    assert tokenizer_difference(DEFAULT_CHECKPOINT / "tokenizer.json", TOKENIZER) is None
    out = tmp_path / "ft"
    train(data4096, out, model_preset("v10-fsp"), _tiny_config(init_from="default", seq_len=256, max_steps=1, micro_batch=2), progress=False)
    first = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line)
    assert first["step"] == 0 and first["val_ppl"] < 30  # the shipped model's own quality on TinyStories, before any step
    _, ft = load_checkpoint(out / "last")
    assert ft["init_from"]["path"] == str(DEFAULT_CHECKPOINT) and ft["init_from"]["step"] == cfg["step"] and ft["step"] == 1


def test_tokenizers_compare_by_content_not_bytes(tmp_path):
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.save(str(tmp_path / "saved.json"), pretty=True)  # the seed's tok.save(): other formatting
    assert (tmp_path / "saved.json").read_bytes() != TOKENIZER.read_bytes()
    assert tokenizer_difference(tmp_path / "saved.json", TOKENIZER) is None
    raw = json.loads(TOKENIZER.read_text())
    raw["model"]["merges"] = [" ".join(m) for m in raw["model"]["merges"]]  # the older "a b" form of merges
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert tokenizer_difference(tmp_path / "old.json", TOKENIZER) is None
    raw["model"]["merges"] = raw["model"]["merges"][:-1]
    (tmp_path / "fewer.json").write_text(json.dumps(raw))
    assert tokenizer_difference(tmp_path / "fewer.json", TOKENIZER).startswith("BPE merges differ")
