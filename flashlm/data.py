"""Corpus loading (local txt/jsonl/parquet or a `datasets` hub name), BPE tokenizer training, token files."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashlm_core import atomic
from flashlm_core.artifacts import EOT, TOKENIZER, check_vocab_fits
from flashlm_core.errors import DataError, FlashLMError
from flashlm_core.hashing import sha256_file
from flashlm_core.versioned import FORMAT_VERSION, check_format_version

SUFFIXES = {".txt": "txt", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_PREFIXES = {"train": ("train",), "validation": ("validation", "valid", "val")}
PREPARE_VERSION = 1  # bump when tokenization output would change for the same inputs


def read_txt_stories(path: Path) -> list[str]:
    """Stories of a .txt file, separated by lines that hold exactly <|endoftext|>."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; pass a UTF-8 text file") from None
    stories, current = [], []
    for line in text.split("\n"):
        if line.strip() == EOT:
            stories.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    stories.append("\n".join(current).strip())
    return [s for s in stories if s]


def split_files(source: Path) -> dict[str, Path]:
    """Map split name -> file in a corpus folder (train*, valid*/val*/validation*)."""
    found: dict[str, Path] = {}
    for path in sorted(source.iterdir()):
        if path.suffix not in SUFFIXES:
            continue
        for split, prefixes in SPLIT_PREFIXES.items():
            if path.stem.lower().startswith(prefixes) and split not in found:
                found[split] = path
    return found


def _local_dataset(path: Path, text_field: str):
    import datasets

    kind = SUFFIXES.get(path.suffix)
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .txt, .jsonl or .parquet")
    if kind == "txt":
        return datasets.Dataset.from_dict({"text": read_txt_stories(path)})
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"cannot read {path} as {kind}: {exc}") from None
    return _text_column(ds, text_field, what=str(path))


def _text_column(ds, text_field: str, *, what: str):
    """The dataset reduced to one column named `text` (from `text_field`)."""
    if text_field not in ds.column_names:
        raise DataError(f"{what}: no {text_field!r} field (found {ds.column_names}); pass --text-field")
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


@dataclass(frozen=True)
class Corpus:
    """The train and validation splits as `datasets.Dataset`s with a `text` column, plus a cache key."""

    train: object
    validation: object
    source: str
    fingerprint: str  # changes whenever the input text changes


def load_corpus(source: str, *, val: str | None = None, text_field: str = "text") -> Corpus:
    """Load a local file/folder, or a hub dataset by name (e.g. roneneldan/TinyStories)."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            files = split_files(path)
            if "train" not in files:
                raise DataError(f"{path}: no train file (train*.txt/.jsonl/.parquet) found")
        else:
            files = {"train": path}
        if val is not None:
            files["validation"] = Path(val).expanduser()
        if "validation" not in files:
            raise DataError(f"{source}: no validation split; add valid.txt beside the train file or pass --val FILE")
        for f in files.values():
            if not f.is_file():
                raise DataError(f"{f}: no such file")
        splits = {k: _local_dataset(f, text_field) for k, f in files.items()}
        fingerprint = hashlib.sha256(json.dumps({k: sha256_file(f) for k, f in sorted(files.items())}).encode()).hexdigest()
        src = {k: str(f.resolve()) for k, f in files.items()}
    elif "/" in source and not source.startswith((".", "/", "~")):
        splits, fingerprint = _hub_splits(source, text_field)
        src = {"hub": source}
    else:
        raise DataError(f"{source}: no such file or folder (and not a hub name like owner/dataset)")
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"{src.get(name, source)}: the {name} split is empty (no stories)")
    return Corpus(splits["train"], splits["validation"], json.dumps(src), fingerprint)


def _hub_splits(name: str, text_field: str):
    import datasets

    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset {name!r}: {exc}; check the name and your network, or pass a local path") from None
    splits = {}
    for split, aliases in SPLIT_PREFIXES.items():
        key = next((k for k in dd if k.lower().startswith(aliases)), None)
        if key is None:
            raise DataError(f"hub dataset {name!r} has no {split} split (has {list(dd)}); pass --val FILE")
        ds = dd[key]
        splits[split] = _text_column(ds, text_field, what=f"hub dataset {name!r}")
    fingerprint = hashlib.sha256("".join(d._fingerprint for d in splits.values()).encode()).hexdigest()
    return splits, fingerprint


def train_tokenizer(texts, *, vocab_size: int):
    """Byte-level BPE with <|endoftext|> as id 0; decode(encode(s)) == s for any UTF-8 string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_fits(vocab_size, DataError)
    if vocab_size < 257:
        raise DataError(f"vocab size {vocab_size} is below the 256 byte symbols + <|endoftext|>; use at least 257")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _tokenize(ds, tok, eot_id: int, num_proc: int | None) -> np.ndarray:
    def encode(batch):
        return {"ids": [e.ids + [eot_id] for e in tok.encode_batch(batch["text"])]}

    if num_proc is None:
        num_proc = 1 if len(ds) < 50_000 else min(8, os.cpu_count() or 1)
    out = ds.map(encode, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                 remove_columns=ds.column_names, desc="tokenizing", load_from_cache_file=False)
    ids = out.with_format("numpy")["ids"]
    return np.concatenate(list(ids)).astype(np.uint16) if len(ids) else np.zeros(0, np.uint16)


def prepare(
    source: str,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 4096,
    tokenizer_path: str | None = None,
    val: str | None = None,
    text_field: str = "text",
    tokenizer_sample_chars: int = 200_000_000,
    num_proc: int | None = None,
    force: bool = False,
) -> dict:
    """Write tokenizer.json, train.bin, val.bin (uint16) and meta.json into out_dir; returns meta.

    Re-running with the same inputs and settings returns the existing meta without doing any work.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; pass a folder path for the prepared data")
    with atomic.exclusive(out, what="prepare"):  # a second prepare into the same --out stops at once
        return _prepare_locked(source, out, vocab_size=vocab_size, tokenizer_path=tokenizer_path, val=val, text_field=text_field,
                               tokenizer_sample_chars=tokenizer_sample_chars, num_proc=num_proc, force=force)


def _prepare_locked(source: str, out: Path, *, vocab_size: int, tokenizer_path: str | None, val: str | None, text_field: str,
                    tokenizer_sample_chars: int, num_proc: int | None, force: bool) -> dict:
    corpus = load_corpus(source, val=val, text_field=text_field)
    settings = {"prepare_version": PREPARE_VERSION, "vocab_size": vocab_size, "text_field": text_field,
                "tokenizer": sha256_file(Path(tokenizer_path)) if tokenizer_path else None,
                "tokenizer_sample_chars": tokenizer_sample_chars, "input": corpus.fingerprint}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if not force:
        reused = _reusable_meta(out, key)
        if reused is not None:
            return {**reused, "reused": True}
    tok = _load_or_train_tokenizer(corpus, tokenizer_path, vocab_size=vocab_size, sample_chars=tokenizer_sample_chars)
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise DataError(f"the tokenizer has no {EOT} token; train one with flashlm-prepare (omit --tokenizer)")
    check_vocab_fits(tok.get_vocab_size(), DataError)
    train_ids = _tokenize(corpus.train, tok, eot_id, num_proc)
    val_ids = _tokenize(corpus.validation, tok, eot_id, num_proc)
    tok_bytes = tok.to_str().encode()
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": json.loads(corpus.source),
        "vocab_size": tok.get_vocab_size(),
        "eot_id": eot_id,
        "stories": {"train": len(corpus.train), "validation": len(corpus.validation)},
        "tokens": {"train": int(train_ids.size), "validation": int(val_ids.size)},
        "sha256": {
            TOKENIZER: hashlib.sha256(tok_bytes).hexdigest(),
            "train.bin": hashlib.sha256(train_ids.tobytes()).hexdigest(),
            "val.bin": hashlib.sha256(val_ids.tobytes()).hexdigest(),
        },
    }
    # The whole folder is written beside the old one and swapped in by rename: a full disk or a kill midway leaves
    # the previous data complete (never a new tokenizer.json beside an old train.bin).
    with atomic.atomic_dir(out) as tmp:
        atomic.write_bytes(tmp / TOKENIZER, tok_bytes)
        atomic.write_bytes(tmp / "train.bin", train_ids.tobytes())
        atomic.write_bytes(tmp / "val.bin", val_ids.tobytes())
        atomic.write_json(tmp / "meta.json", meta)
    return {**meta, "reused": False}


def _reusable_meta(out: Path, key: str) -> dict | None:
    """The existing meta.json when it was made from the same inputs and settings (`key`)."""
    if not (out / "meta.json").exists():
        return None
    try:
        meta = load_meta(out)
    except DataError:
        return None
    return meta if meta.get("key") == key else None


def _load_or_train_tokenizer(corpus: Corpus, tokenizer_path: str | None, *, vocab_size: int, sample_chars: int):
    """The given tokenizer.json, or a byte-level BPE trained on the first `sample_chars` of the train split."""
    from tokenizers import Tokenizer

    if tokenizer_path:
        try:
            return Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises its own exception types
            raise DataError(f"cannot load tokenizer {tokenizer_path}: {exc}") from None

    def sample():
        budget = sample_chars
        for batch in corpus.train.iter(batch_size=1000):
            for text in batch["text"]:
                yield text
                budget -= len(text)
                if budget <= 0:
                    return

    return train_tokenizer(sample(), vocab_size=vocab_size)


def load_meta(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir}: no meta.json; run flashlm-prepare first")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); re-run flashlm-prepare --force") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a JSON object; re-run flashlm-prepare --force")
    try:
        check_format_version(meta.get("format_version"), what=str(path))
    except FlashLMError as exc:  # a data folder's version problem is a data error, not a checkpoint one
        raise DataError(str(exc)) from None
    return meta


@dataclass
class TokenData:
    """Memory-mapped train/val token arrays of a prepared data folder, checked against its meta.json."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    tokenizer_path: Path

    @classmethod
    def open(cls, data_dir: str | os.PathLike, *, verify: bool = True) -> TokenData:
        """Open a prepared folder; verify=True also checks every file's sha256 and the token-id range."""
        data_dir = Path(data_dir)
        meta = load_meta(data_dir)
        redo = f"re-run flashlm-prepare with --out {data_dir} --force"
        try:
            vocab, counts, digests = meta["vocab_size"], meta["tokens"], meta["sha256"]
            expected = {"train.bin": int(counts["train"]), "val.bin": int(counts["validation"])}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{data_dir}/meta.json: missing or malformed field {exc}; {redo}") from None
        tokenizer_path = data_dir / TOKENIZER
        if not tokenizer_path.is_file():
            raise DataError(f"{tokenizer_path}: missing; {redo}")
        arrays = []
        for name, n in expected.items():
            path = data_dir / name
            if not path.is_file():
                raise DataError(f"{path}: missing; {redo}")
            if path.is_symlink() or path.resolve().parent != data_dir.resolve():  # never read (or size) a file elsewhere
                raise DataError(f"{path}: a symlink; the token files of a data folder are its own files; {redo}")
            size = path.stat().st_size
            if size != 2 * n:  # uint16 tokens: an odd or short size is a truncated or foreign file
                raise DataError(f"{path}: {size} bytes but meta.json says {n} uint16 tokens ({2 * n} bytes); {redo}")
            arrays.append(np.memmap(path, dtype=np.uint16, mode="r") if n else np.zeros(0, np.uint16))
        if verify:
            for name, arr in zip(expected, arrays):
                top = int(arr.max()) if arr.size else 0
                if top >= vocab:
                    raise DataError(f"{data_dir / name}: token id {top} is outside the vocabulary ({vocab}); {redo}")
            for name in (TOKENIZER, *expected):
                want = digests.get(name)
                if want is not None and sha256_file(data_dir / name, fast=True) != want:
                    raise DataError(f"{data_dir / name}: sha256 differs from meta.json (the file changed after flashlm-prepare); {redo}")
        return cls(arrays[0], arrays[1], meta, tokenizer_path)

    def token_bytes(self) -> np.ndarray:
        """(vocab,) UTF-8 bytes of each token id, for bits per byte."""
        from tokenizers import Tokenizer

        from flashlm_core.bpb import token_byte_lengths

        return token_byte_lengths(Tokenizer.from_file(str(self.tokenizer_path)))
