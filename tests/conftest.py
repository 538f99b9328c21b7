"""Shared fixtures: the real TinyStories sample (read from ../shared), prepared once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("FLASHLM_CORPUS", ROOT.parent / "shared" / "data" / "tinystories"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS / "train.txt").is_file():
        pytest.fail(f"TinyStories sample not found at {CORPUS}; set FLASHLM_CORPUS")
    return CORPUS


@pytest.fixture(scope="session")
def small_data(corpus_dir, tmp_path_factory) -> Path:
    """The real corpus tokenized with a 512-token BPE (fast to train, same code path as 4096)."""
    from flashlm.data import prepare

    out = tmp_path_factory.mktemp("data512")
    prepare(str(corpus_dir), out, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def tiny_run(small_data, tmp_path_factory) -> Path:
    """A tiny model trained briefly on real text: the checkpoint the export/runtime tests use."""
    from flashlm.recipes import recipe_config
    from flashlm.train import train
    from flashlm_core.config import model_preset

    out = tmp_path_factory.mktemp("tinyrun")
    tc = recipe_config("default", seq_len=64, micro_batch=8, grad_accum=1, lr=3e-3, warmup_steps=10,
                       max_steps=300, eval_every=100, eval_batches=4, threads=2, dropout=0.0)
    train(small_data, out, model_preset("tiny"), tc, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_run, small_data, tmp_path_factory) -> Path:
    """fp32 + int8 + FSP-head export of the tiny checkpoint, validated against torch at export."""
    from flashlm_export.exporter import export

    out = tmp_path_factory.mktemp("export") / "tiny"
    export(tiny_run / "best", out, int8=True, data_dir=str(small_data), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def torch_model(tiny_run):
    """The tiny checkpoint's torch model (eval mode): the reference the exports are compared with."""
    from flashlm.checkpoint import load_checkpoint

    return load_checkpoint(tiny_run / "best")[0]


@pytest.fixture(scope="session")
def lm32(tiny_export):
    """The runtime on the tiny export's fp32 plain graph."""
    from flashlm_runtime import FlashLM

    return FlashLM(tiny_export, int8=False)


@pytest.fixture(scope="session")
def lm8(tiny_export):
    """The runtime on the tiny export's int8 plain graph."""
    from flashlm_runtime import FlashLM

    return FlashLM(tiny_export, int8=True)


@pytest.fixture(scope="session")
def tiny_contrib_export(tiny_run, small_data, tmp_path_factory) -> Path:
    """The same checkpoint exported with --ops contrib (fp32 + int8 + FSP head)."""
    from flashlm_export.exporter import export

    out = tmp_path_factory.mktemp("export") / "tiny_contrib"
    export(tiny_run / "best", out, int8=True, ops="contrib", data_dir=str(small_data), log=lambda *_: None)
    return out
