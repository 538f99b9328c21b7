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
    assert corpus.train.kind == "arrow" and corpus.validation.size == 5  # datasets' cache files, read batch by batch
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
    with pytest.raises(DataError, match="valid.txt: not UTF-8 at byte 0 \\(story 1\\)"):
        load_corpus(str(lonely))
    with pytest.raises(DataError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="does not fit the uint16 token files"):
        train_tokenizer(["abc"], vocab_size=70000)
    with pytest.raises(DataError, match="run flashlm-prepare"):
        TokenData.open(tmp_path)


def test_hub_layout_parquet_shards_prepare_like_one_text_file(tmp_path, small_data, corpus_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stories = read_txt_stories(corpus_dir / "valid.txt")[:90]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "train.txt").write_text("".join(f"{s}\n{EOT}\n" for s in stories[:80]))
    (tmp_path / "txt" / "valid.txt").write_text("".join(f"{s}\n{EOT}\n" for s in stories[80:]))
    shards = tmp_path / "hub" / "data"
    shards.mkdir(parents=True)
    for i, part in enumerate((stories[:30], stories[30:80])):  # train-00000-of-00002.parquet, ...: the hub's names
        pq.write_table(pa.table({"text": part, "id": list(range(len(part)))}), shards / f"train-{i:05d}-of-00002.parquet")
    pq.write_table(pa.table({"text": stories[80:]}), shards / "validation-00000-of-00001.parquet")
    tokenizer = str(small_data / "tokenizer.json")
    as_text = prepare(str(tmp_path / "txt"), tmp_path / "a", tokenizer_path=tokenizer)
    as_shards = prepare(str(tmp_path / "hub"), tmp_path / "b", tokenizer_path=tokenizer)
    assert as_shards["stories"] == {"train": 80, "validation": 10} and as_shards["tokens"] == as_text["tokens"]
    assert as_shards["sha256"] == as_text["sha256"]  # the same ids, byte for byte
    assert len(as_shards["source"]["train"]) == 2


def test_bad_bytes_halfway_stop_before_any_work_and_keep_the_old_data(tmp_path, small_data, corpus_dir, monkeypatch):
    import flashlm.data as data_mod

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stories = read_txt_stories(corpus_dir / "valid.txt")[:3]
    good = "".join(f"{s}\n{EOT}\n" for s in stories).encode()
    (corpus / "valid.txt").write_bytes(good)
    (corpus / "train.txt").write_bytes(good)
    out = tmp_path / "out"
    prepare(str(corpus), out, tokenizer_path=str(small_data / "tokenizer.json"))
    before = (out / "meta.json").read_bytes()
    bad_at = len("".join(f"{s}\n{EOT}\n" for s in stories[:2]).encode()) + 7
    (corpus / "train.txt").write_bytes(good[:bad_at] + b"\xe9t\xe9" + good[bad_at:])  # latin-1 in the third story
    monkeypatch.setattr(data_mod, "_load_or_train_tokenizer", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(DataError, match=rf"train.txt: not UTF-8 at byte {bad_at:,} \(story 3\).*iconv"):
        prepare(str(corpus), out, vocab_size=300)
    assert (out / "meta.json").read_bytes() == before and TokenData.open(out).meta["stories"]["train"] == 3


def test_a_parquet_without_the_text_column_or_an_empty_split_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "c"
    folder.mkdir()
    pq.write_table(pa.table({"story": ["a cat", "a dog"]}), folder / "train.parquet")
    pq.write_table(pa.table({"story": ["a cow"]}), folder / "valid.parquet")
    with pytest.raises(DataError, match=r"train.parquet: no 'text' column \(found \['story'\]\); pass --text-field"):
        load_corpus(str(folder))
    pq.write_table(pa.table({"story": pa.array([], pa.string())}), folder / "valid.parquet")
    with pytest.raises(DataError, match="the validation split is empty"):
        load_corpus(str(folder), text_field="story")
    (folder / "valid.jsonl").write_text('[{"story": "a"}]\n')
    (folder / "valid.parquet").unlink()
    with pytest.raises(DataError, match="a JSON array; write JSON Lines"):
        load_corpus(str(folder), text_field="story")


FULL_DISK = """
import resource, signal, sys
from flashlm.data import prepare
from flashlm_core.errors import DataError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    prepare(sys.argv[1], sys.argv[2], tokenizer_path=sys.argv[3], force=True)
except DataError as exc:
    print(exc)
"""


def test_a_disk_that_fills_while_writing_train_bin_leaves_the_old_data(tmp_path, small_data, corpus_dir):
    import subprocess
    import sys

    out = tmp_path / "out"
    small = tmp_path / "small"
    small.mkdir()
    stories = read_txt_stories(corpus_dir / "valid.txt")
    (small / "train.txt").write_text("".join(f"{s}\n{EOT}\n" for s in stories[:20]))
    (small / "valid.txt").write_text("".join(f"{s}\n{EOT}\n" for s in stories[20:25]))
    prepare(str(small), out, tokenizer_path=str(small_data / "tokenizer.json"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(corpus_dir), str(out), str(small_data / "tokenizer.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("cannot write train.bin (File too large) after") and "the previous data folder is untouched" in r.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written that looks valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small"]  # and no temp folder left beside it


def test_each_ranks_train_windows_are_its_array_split_share_read_from_the_file(small_data):
    data = TokenData.open(small_data)
    for world in (1, 2, 3):
        for rank, share in enumerate(np.array_split(np.asarray(data.train), world)):
            windows = data.train_windows(rank=rank, world=world)
            assert len(windows) == share.size and (windows[:] == share).all()
            assert (windows[7:7 + 257] == share[7:7 + 257]).all() and windows[len(windows):].size == 0
