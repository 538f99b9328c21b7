"""A corpus as splits of files read story by story in bounded memory: .txt, .jsonl, .parquet shards, a hub dataset's cache."""
from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flashlm_core.artifacts import EOT
from flashlm_core.errors import DataError
from flashlm_core.hashing import sha256_file

SUFFIXES = {".txt": "txt", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_PREFIXES = {"train": ("train",), "validation": ("validation", "valid", "val")}
CHUNK = 16 << 20  # bytes read at a time when a file is scanned
PARQUET_ROWS = 1024  # rows of a parquet or arrow batch


@dataclass(frozen=True)
class Split:
    """One split's files, all of one kind, read in order; `size` is what progress counts (bytes, or rows for tables)."""

    name: str
    files: tuple[Path, ...]
    kind: str  # txt | json | parquet | arrow (a datasets cache file)
    text_field: str
    size: int
    unit: str  # "B" or "rows"

    def stories(self) -> Iterator[tuple[str, int]]:
        """(story, progress units it consumed) one by one; nothing beyond one story or one table batch is held."""
        for path in self.files:
            yield from READERS[self.kind](path, self.text_field)

    def first_story(self) -> str | None:
        return next((story for story, _ in self.stories()), None)


@dataclass(frozen=True)
class Corpus:
    """The train and validation splits and a cache key that changes whenever the input text changes."""

    train: Split
    validation: Split
    source: str
    fingerprint: str


def _txt_stories(path: Path, _field: str) -> Iterator[tuple[str, int]]:
    """Stories separated by lines that hold exactly <|endoftext|> (surrounding whitespace allowed), each stripped."""
    current: list[str] = []
    used = 0
    with open(path, "rb") as f:
        for raw in f:
            used += len(raw)
            line = raw.decode("utf-8")
            if line.strip() == EOT:
                story = "".join(current).strip()
                current = []
                if story:
                    yield story, used
                    used = 0
            else:
                current.append(line)
    story = "".join(current).strip()
    if story:
        yield story, used


def _jsonl_stories(path: Path, field: str) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                row = exc
            if not isinstance(row, dict):
                if number == 1 and raw.lstrip().startswith(b"["):
                    raise DataError(f"{path}: a JSON array; write JSON Lines (one object a line, .jsonl)")
                raise DataError(f"{path}: line {number} is not a JSON object ({row}); write one object a line")
            if field not in row:
                raise DataError(f"{path}: line {number} has no {field!r} field (has {sorted(row)[:8]}); pass --text-field")
            text = row[field]
            if not isinstance(text, str):
                raise DataError(f"{path}: line {number}: {field!r} is {type(text).__name__}, not text")
            yield text, len(raw)


def _table_batches(path: Path, field: str, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        return pq.ParquetFile(path).iter_batches(batch_size=PARQUET_ROWS, columns=[field])
    return (batch.select([field]) for batch in pa.ipc.open_stream(pa.OSFile(str(path))))  # read, not memory-mapped


def _table_stories(kind: str):
    def read(path: Path, field: str) -> Iterator[tuple[str, int]]:
        for batch in _table_batches(path, field, kind):
            for text in batch.column(0).to_pylist():
                yield text or "", 1
    return read


READERS = {"txt": _txt_stories, "json": _jsonl_stories, "parquet": _table_stories("parquet"), "arrow": _table_stories("arrow")}


def scan_text(path: Path, *, separator: bytes) -> str:
    """Read a text file once, in chunks: its sha256, and a one-line error at the first byte that is not UTF-8 (with
    the story or line it falls in), so a bad byte halfway through stops the run before any tokenizing."""
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = seen = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                where = offset + exc.start
                seen += chunk[: exc.start].count(separator)
                what = "story" if separator != b"\n" else "line"
                raise DataError(f"{path}: not UTF-8 at byte {where:,} ({what} {seen + 1:,}): {exc.reason}; "
                                "re-encode the file as UTF-8 (iconv -f LATIN1 -t UTF-8, say)") from None
            seen += chunk.count(separator)
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path}: ends inside a UTF-8 character (a truncated file?); re-download or re-encode it") from None
    return h.hexdigest()


def scan_parquet(path: Path, field: str) -> tuple[str, int]:
    """(sha256, rows) of a parquet file whose schema has the text field; a one-line error otherwise."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a damaged file
        raise DataError(f"cannot read {path} as parquet: {exc}") from None
    import pyarrow as pa

    schema = pf.schema_arrow
    if field not in schema.names:
        raise DataError(f"{path}: no {field!r} column (found {schema.names}); pass --text-field")
    if not (pa.types.is_string(schema.field(field).type) or pa.types.is_large_string(schema.field(field).type)):
        raise DataError(f"{path}: column {field!r} holds {schema.field(field).type}, not text; pass --text-field")
    return sha256_file(path, fast=True), pf.metadata.num_rows


def split_files(source: Path) -> dict[str, list[Path]]:
    """Split name -> its files in a corpus folder (train*, valid*/val*/validation*), in the folder or in its data/
    (the hub's layout: data/train-00000-of-00004.parquet ...), shards in name order; one kind per split."""
    found: dict[str, list[Path]] = {}
    for folder in (source, source / "data"):
        if not folder.is_dir() or found:
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            split = next((s for s, prefixes in SPLIT_PREFIXES.items() if path.stem.lower().startswith(prefixes)), None)
            if split is not None:
                found.setdefault(split, []).append(path)
    for split, paths in found.items():
        kinds = {SUFFIXES[p.suffix] for p in paths}
        if len(kinds) > 1:
            raise DataError(f"{source}: the {split} split mixes file kinds ({', '.join(p.name for p in paths)}); keep one kind a split")
    return found


def local_split(name: str, paths: list[Path], text_field: str) -> tuple[Split, object]:
    """The split and its fingerprint part (one file's sha256, or the list of its shards')."""
    kind = SUFFIXES.get(paths[0].suffix)
    if kind is None:
        raise DataError(f"{paths[0]}: unsupported file type {paths[0].suffix!r}; use .txt, .jsonl or .parquet")
    digests, size = [], 0
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if kind == "parquet":
            digest, rows = scan_parquet(path, text_field)
            size += rows
        else:
            digest = scan_text(path, separator=EOT.encode() if kind == "txt" else b"\n")
            if kind == "json":  # every line parsed once now, so a bad line deep in the file stops the run before work
                for _ in _jsonl_stories(path, text_field):
                    pass
            size += path.stat().st_size
        digests.append(digest)
    split = Split(name, tuple(paths), kind, text_field, size, "rows" if kind == "parquet" else "B")
    return split, digests[0] if len(digests) == 1 else digests


def hub_splits(name: str, text_field: str) -> tuple[dict[str, Split], str]:
    """A hub dataset through datasets' download cache, whose arrow files are then read batch by batch (not mapped)."""
    import datasets

    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset {name!r}: {exc}; check the name and your network, or pass a local path") from None
    splits, prints = {}, []
    for split, aliases in SPLIT_PREFIXES.items():
        key = next((k for k in dd if k.lower().startswith(aliases)), None)
        if key is None:
            raise DataError(f"hub dataset {name!r} has no {split} split (has {list(dd)}); pass --val FILE")
        ds = dd[key]
        if text_field not in ds.column_names:
            raise DataError(f"hub dataset {name!r}: no {text_field!r} field (found {ds.column_names}); pass --text-field")
        files = tuple(Path(c["filename"]) for c in ds.cache_files)
        if not files:
            raise DataError(f"hub dataset {name!r}: its {key} split is not in datasets' on-disk cache; pass a local path")
        splits[split] = Split(split, files, "arrow", text_field, len(ds), "rows")
        prints.append(ds._fingerprint)
    return splits, hashlib.sha256("".join(prints).encode()).hexdigest()


def load_corpus(source: str, *, val: str | None = None, text_field: str = "text") -> Corpus:
    """A local file or folder, or a hub dataset by name (e.g. roneneldan/TinyStories), checked before any work: every
    file read once (UTF-8, the text column, its sha256), and neither split empty."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            files = split_files(path)
            if "train" not in files:
                raise DataError(f"{path}: no train file (train*.txt/.jsonl/.parquet, or data/train-*.parquet) found")
        else:
            files = {"train": [path]}
        if val is not None:
            files["validation"] = [Path(val).expanduser()]
        if "validation" not in files:
            raise DataError(f"{source}: no validation split; add valid.txt beside the train file or pass --val FILE")
        splits, prints = {}, {}
        for name, paths in files.items():
            splits[name], prints[name] = local_split(name, paths, text_field)
        fingerprint = hashlib.sha256(json.dumps(dict(sorted(prints.items()))).encode()).hexdigest()
        src = {k: str(v[0].resolve()) if len(v) == 1 else [str(p.resolve()) for p in v] for k, v in files.items()}
    elif "/" in source and not source.startswith((".", "/", "~")):
        splits, fingerprint = hub_splits(source, text_field)
        src = {"hub": source}
    else:
        raise DataError(f"{source}: no such file or folder (and not a hub name like owner/dataset)")
    for name, split in splits.items():
        if split.first_story() is None:
            raise DataError(f"{src.get(name, source)}: the {name} split is empty (no stories)")
    return Corpus(splits["train"], splits["validation"], json.dumps(src), fingerprint)
