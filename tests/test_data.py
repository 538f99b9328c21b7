import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from flashlm.data import EOT, TokenData, load_corpus, prepare, read_txt_stories, train_tokenizer
from flashlm_core.errors import DataError


def test_tokenizer_roundtrip_on_real_text(small_data, corpus_dir):
    tok = Tokenizer.from_file(str(small_data / "tokenizer.json"))
    stories = read_txt_stories(corpus_dir / "valid.txt")
    assert len(stories) == 747
    for story in stories[:300]:
        assert tok.decode(tok.encode(story).ids) == story
    odd = "naïve café — “quotes” 🙂 tabs\tand\n\nnewlines  "
    assert tok.decode(tok.encode(odd).ids) == odd


def test_prepare_outputs_and_meta(small_data):
    meta = json.loads((small_data / "meta.json").read_text())
    data = TokenData.open(small_data)
    assert meta["vocab_size"] == 512 and meta["eot_id"] == 0
    assert data.train.dtype == np.uint16 and data.train.size == meta["tokens"]["train"] > 100_000
    assert int((data.val == meta["eot_id"]).sum()) == meta["stories"]["validation"] == 747
    tok = Tokenizer.from_file(str(data.tokenizer_path))
    first = tok.decode(data.val[: int(np.argmax(data.val == 0))].tolist())
    assert first.startswith("Spot. Spot saw the shiny car")


def test_rerun_with_same_inputs_does_no_work(small_data, corpus_dir):
    before = (small_data / "train.bin").stat().st_mtime_ns
    meta = prepare(str(corpus_dir), small_data, vocab_size=512)
    assert meta["reused"] is True
    assert (small_data / "train.bin").stat().st_mtime_ns == before


def _write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))


def test_jsonl_parquet_and_given_tokenizer(tmp_path, small_data):
    import datasets

    texts = [f"Once upon a time there was a cat number {i}." for i in range(50)]
    src = tmp_path / "corpus"
    src.mkdir()
    _write_jsonl(src / "train.jsonl", texts, field="story")
    datasets.Dataset.from_dict({"story": texts[:10]}).to_parquet(str(src / "validation.parquet"))
    meta = prepare(str(src), tmp_path / "out", tokenizer_path=str(small_data / "tokenizer.json"), text_field="story")
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    ids = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert meta["stories"] == {"train": 50, "validation": 10}
    assert tok.decode(ids[: int(np.argmax(ids == 0))].tolist()) == texts[0]


def test_hub_path_uses_datasets_load_dataset(tmp_path, monkeypatch):
    """The hub code path, fed from local files (no hub is reachable here)."""
    import datasets

    texts = [f"A story about a dog called {i}." for i in range(40)]
    _write_jsonl(tmp_path / "t.jsonl", texts)
    _write_jsonl(tmp_path / "v.jsonl", texts[:5])
    calls = []
    real_load_dataset = datasets.load_dataset

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        return real_load_dataset("json", data_files={"train": str(tmp_path / "t.jsonl"), "validation": str(tmp_path / "v.jsonl")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_corpus("roneneldan/TinyStories")
    assert calls == ["roneneldan/TinyStories"]
    assert corpus.train.column_names == ["text"] and len(corpus.validation) == 5
    meta = prepare("roneneldan/TinyStories", tmp_path / "out", vocab_size=300)
    assert meta["source"] == {"hub": "roneneldan/TinyStories"} and meta["tokens"]["train"] > 0


def test_bad_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.txt").write_text(f"\n{EOT}\n")
    (empty / "valid.txt").write_text(f"hello\n{EOT}\n")
    with pytest.raises(DataError, match="train split is empty"):
        load_corpus(str(empty))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "train.txt").write_text("a story\n")
    with pytest.raises(DataError, match="no validation split.*--val"):
        load_corpus(str(lonely))
    (lonely / "valid.txt").write_bytes(b"\xff\xfe\x00bad bytes")
    with pytest.raises(DataError, match="cannot read .*valid.txt"):
        load_corpus(str(lonely))
    with pytest.raises(DataError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="does not fit the uint16 token files"):
        train_tokenizer(["abc"], vocab_size=70000)
    with pytest.raises(DataError, match="run flashlm-prepare"):
        TokenData.open(tmp_path)
