"""flashlm-prepare: a BPE tokenizer trained on a sample, token files written as the corpus streams; TokenData reads them."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashlm.corpus import CHUNK, READERS, Corpus, Split, load_corpus
from flashlm_core import atomic
from flashlm_core.artifacts import EOT, TOKENIZER, check_vocab_fits
from flashlm_core.errors import DataError
from flashlm_core.hashing import sha256_file
from flashlm_core.versioned import FORMAT_VERSION, read_versioned_json

PREPARE_VERSION = 1  # bump when tokenization output would change for the same inputs
BATCH_CHARS = 4 << 20  # characters of stories encoded at a time: bounds memory, and enough for every core


def read_txt_stories(path: Path) -> list[str]:
    """Stories of a .txt file, separated by lines that hold exactly <|endoftext|> (the whole file: for small files)."""
    try:
        return [story for story, _ in READERS["txt"](Path(path), "text")]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; pass a UTF-8 text file") from None


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


def _encode(tok, texts: list[str], eot_id: int) -> np.ndarray:
    """The texts' ids, each followed by <|endoftext|>, as uint16 (tokenizers encodes the batch on all cores)."""
    encodings = tok.encode_batch(texts)
    return np.fromiter(itertools.chain.from_iterable(itertools.chain(e.ids, (eot_id,)) for e in encodings), dtype=np.uint16)


def _batches(split: Split):
    """(texts, progress units) of about BATCH_CHARS characters each."""
    texts, chars, used = [], 0, 0
    for text, units in split.stories():
        texts.append(text)
        chars += len(text)
        used += units
        if chars >= BATCH_CHARS:
            yield texts, used
            texts, chars, used = [], 0, 0
    if texts:
        yield texts, used


def write_tokens(split: Split, tok, eot_id: int, path: Path, *, progress: bool) -> dict:
    """Tokenize the split into path (uint16 ids) as the stories are read: each batch is encoded while the next is
    read, written at once and hashed as written, so memory holds two batches whatever the corpus size.
    Returns stories, tokens, sha256 and the seconds spent waiting on the encoder."""
    from tqdm import tqdm

    h = hashlib.sha256()
    counts = {"stories": 0, "tokens": 0, "encode_wait_seconds": 0.0}
    bar = tqdm(total=split.size, unit=split.unit, unit_scale=True, desc=f"tokenizing {split.name}", disable=not progress, dynamic_ncols=True)

    def write(job, n_texts: int, used: int) -> None:
        t0 = time.perf_counter()
        ids = job.result()
        counts["encode_wait_seconds"] += time.perf_counter() - t0
        try:
            f.write(memoryview(ids))
        except OSError as exc:
            raise DataError(f"cannot write {path.name} ({exc.strerror}) after {counts['tokens']:,} tokens: free space on "
                            f"{path.parent.parent} (about 2 bytes a token) and run again; the previous data folder is untouched") from None
        h.update(memoryview(ids))
        counts["stories"] += n_texts
        counts["tokens"] += int(ids.size)
        bar.update(used)

    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        pending = None
        for texts, used in _batches(split):
            job = pool.submit(_encode, tok, texts, eot_id)
            if pending is not None:
                write(*pending)
            pending = (job, len(texts), used)
        if pending is not None:
            write(*pending)
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise DataError(f"cannot write {path.name} ({exc.strerror}): free space on {path.parent.parent} and run again") from None
    bar.close()
    return {**counts, "sha256": h.hexdigest()}


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
    progress: bool = False,
) -> dict:
    """Write tokenizer.json, train.bin, val.bin (uint16) and meta.json into out_dir; returns meta (and, when work was
    done, the seconds each stage took under "timing").

    Memory stays bounded whatever the corpus size: the input is read story by story. Re-running with the same inputs
    and settings returns the existing meta without doing any work. num_proc: tokenizer threads (default: all cores).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; pass a folder path for the prepared data")
    if num_proc is not None:
        if num_proc < 1:
            raise DataError(f"--num-proc {num_proc}: give at least 1 (or leave it out for all cores)")
        os.environ["RAYON_NUM_THREADS"] = str(num_proc)  # read by tokenizers' thread pool when it first starts
    with atomic.exclusive(out, what="prepare"):  # a second prepare into the same --out stops at once
        return _prepare_locked(source, out, vocab_size=vocab_size, tokenizer_path=tokenizer_path, val=val, text_field=text_field,
                               tokenizer_sample_chars=tokenizer_sample_chars, force=force, progress=progress)


def _prepare_locked(source: str, out: Path, *, vocab_size: int, tokenizer_path: str | None, val: str | None, text_field: str,
                    tokenizer_sample_chars: int, force: bool, progress: bool) -> dict:
    clock = {"start": time.perf_counter()}
    if tokenizer_path is None:
        check_vocab_fits(vocab_size, DataError)
    corpus = load_corpus(source, val=val, text_field=text_field)
    settings = {"prepare_version": PREPARE_VERSION, "vocab_size": vocab_size, "text_field": text_field,
                "tokenizer": sha256_file(Path(tokenizer_path)) if tokenizer_path else None,
                "tokenizer_sample_chars": tokenizer_sample_chars, "input": corpus.fingerprint}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if not force:
        reused = _reusable_meta(out, key)
        if reused is not None:
            return {**reused, "reused": True}
    clock["scan"] = time.perf_counter()
    tok = _load_or_train_tokenizer(corpus, tokenizer_path, vocab_size=vocab_size, sample_chars=tokenizer_sample_chars)
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise DataError(f"the tokenizer has no {EOT} token; train one with flashlm-prepare (omit --tokenizer)")
    check_vocab_fits(tok.get_vocab_size(), DataError)
    clock["tokenizer"] = time.perf_counter()
    tok_bytes = tok.to_str().encode()
    # The whole folder is written beside the old one and swapped in by rename: a full disk or a kill midway leaves
    # the previous data complete (never a new tokenizer.json beside an old train.bin).
    with atomic.atomic_dir(out) as tmp:
        written = {name: write_tokens(split, tok, eot_id, tmp / name, progress=progress)
                   for name, split in (("train.bin", corpus.train), ("val.bin", corpus.validation))}
        clock["tokenize"] = time.perf_counter()
        meta = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "source": json.loads(corpus.source),
            "vocab_size": tok.get_vocab_size(),
            "eot_id": eot_id,
            "stories": {"train": written["train.bin"]["stories"], "validation": written["val.bin"]["stories"]},
            "tokens": {"train": written["train.bin"]["tokens"], "validation": written["val.bin"]["tokens"]},
            "sha256": {TOKENIZER: hashlib.sha256(tok_bytes).hexdigest(), **{name: w["sha256"] for name, w in written.items()}},
        }
        atomic.write_bytes(tmp / TOKENIZER, tok_bytes)
        atomic.write_json(tmp / "meta.json", meta)
    end = time.perf_counter()
    timing = {"scan": clock["scan"] - clock["start"], "tokenizer": clock["tokenizer"] - clock["scan"],
              "tokenize": clock["tokenize"] - clock["tokenizer"], "total": end - clock["start"],
              "encode_wait": sum(w["encode_wait_seconds"] for w in written.values())}
    return {**meta, "reused": False, "timing": timing}


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
        for text, _ in corpus.train.stories():
            yield text
            budget -= len(text)
            if budget <= 0:
                return

    return train_tokenizer(sample(), vocab_size=vocab_size)


def load_meta(data_dir: str | os.PathLike) -> dict:
    """A prepared folder's meta.json, version-checked; any problem is a DataError naming the fix."""
    return read_versioned_json(data_dir, "meta.json", kind="data", make="run flashlm-prepare first",
                               fix="re-run flashlm-prepare --force", error=DataError)


def _read_through(path: Path, *, tokens: bool) -> tuple[str, int]:
    """(sha256, largest uint16 token id or -1) of a file read in chunks, never mapped: its pages go to the OS cache,
    not to this process's memory, however large the file."""
    h, top = hashlib.sha256(), -1
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if tokens:
                top = max(top, int(np.frombuffer(chunk, np.uint16).max()))
    return h.hexdigest(), top


class TokenWindows:
    """tokens[a:b] of a span of a uint16 token file, each read from the file when asked: the process never maps
    the file, so its memory stays flat however large the file is and however many windows a run reads."""

    def __init__(self, path: str | os.PathLike, start: int, stop: int):
        self.path, self.start, self.stop = Path(path), start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, step = key.indices(len(self))
        if step != 1:
            raise IndexError("TokenWindows takes contiguous slices only")
        return np.fromfile(self.path, dtype=np.uint16, count=max(0, b - a), offset=2 * (self.start + a))


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
            for name in (TOKENIZER, *expected):
                digest, top = _read_through(data_dir / name, tokens=name != TOKENIZER)
                if top >= vocab:
                    raise DataError(f"{data_dir / name}: token id {top} is outside the vocabulary ({vocab}); {redo}")
                want = digests.get(name)
                if want is not None and digest != want:
                    raise DataError(f"{data_dir / name}: sha256 differs from meta.json (the file changed after flashlm-prepare); {redo}")
        return cls(arrays[0], arrays[1], meta, tokenizer_path)

    def train_windows(self, *, rank: int = 0, world: int = 1) -> TokenWindows:
        """This rank's contiguous share of train.bin (np.array_split's), read window by window."""
        q, extra = divmod(len(self.train), world)
        start = rank * q + min(rank, extra)
        return TokenWindows(self.tokenizer_path.parent / "train.bin", start, start + q + (rank < extra))

    def token_bytes(self) -> np.ndarray:
        """(vocab,) UTF-8 bytes of each token id, for bits per byte."""
        from tokenizers import Tokenizer

        from flashlm_core.bpb import token_byte_lengths

        return token_byte_lengths(Tokenizer.from_file(str(self.tokenizer_path)))
