"""Data: Hub id | local file | folder | bundled fallback -> `datasets.Dataset` of texts -> packed token blocks.

Every loader returns the data together with its provenance (where it came from, whether it is the fallback and
why, a content fingerprint and sizes), which the run log records.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import string
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from shared.config.errors import UserError
from shared.config.files import walk_files
from shared.data.hub import Provenance, hub_reachable, load_or_fallback, warn_loudly  # noqa: F401 (re-exported)
from shared.config.recipe import DataArgs, resolve_path

LOCAL_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".parquet")


# ----------------------------------------------------------------------------------------------------------------
# local files


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the objects of a JSONL file; a bad line is a UserError naming the file and the line."""
    path = Path(path)
    with open(path, "rb") as f:
        yield from read_jsonl_lines(enumerate(f, start=1), path)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start})") from None


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = walk_files(path, LOCAL_SUFFIXES)
        if not files:
            raise UserError(f"{path}: folder holds no data files ({', '.join(LOCAL_SUFFIXES)})")
        return files
    raise UserError(f"data not found: {path}")


BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".csv")


def load_local(path: str | Path) -> Dataset:
    """jsonl / json (a list of objects) / txt (one record per blank-line-separated paragraph) / csv / parquet files,
    or a folder of them, through `datasets`' own builders: Arrow files in its cache, memory-mapped, so a corpus of any
    size is never held in memory (and a second run reuses them). A bad record is one line naming the file and line."""
    from datasets import Features, Value, concatenate_datasets, disable_progress_bars, enable_progress_bars, load_dataset

    files = _local_files(resolve_path(path))
    for file in files:
        file_digest(file)  # UTF-8 checked (and the fingerprint read) before anything is parsed
    parts = []
    for suffix in dict.fromkeys(f.suffix for f in files):
        group = [f for f in files if f.suffix == suffix and _has_records(f)]
        if not group:
            continue
        kwargs = {"sample_by": "paragraph"} if suffix == ".txt" else {}
        small = sum(f.stat().st_size for f in group) < 50 << 20
        if small:
            disable_progress_bars()  # a bar per bundled file is noise; a big corpus shows its progress
        try:
            part = load_dataset(BUILDERS[suffix], data_files=[str(f) for f in group], split="train", **kwargs)
            if suffix == ".txt":  # paragraphs without their surrounding blank space; blank ones dropped
                part = part.map(lambda b: {"text": [t.strip() for t in b["text"]]}, batched=True,
                                desc="paragraphs").filter(lambda b: [bool(t) for t in b["text"]], batched=True)
            if Value("large_string") in part.features.values():  # parquet's: one string type for all parts
                part = part.cast(Features({k: Value("string") if v == Value("large_string") else v
                                           for k, v in part.features.items()}))
            parts.append(part)
        except UserError:
            raise
        except Exception as e:  # pyarrow's parse errors name no line: find it, and say it in one line
            raise _first_bad_record(group) or UserError(f"{group[0]}: unreadable ({_first_line(e)})") from None
        finally:
            if small:
                enable_progress_bars()
    if not parts or not sum(len(p) for p in parts):
        raise UserError(f"{path}: empty dataset (no records)")
    try:
        return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    except Exception as e:  # pyarrow schema clash between files
        raise UserError(f"{path}: records disagree on their columns' types ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__ or e
    return (str(cause) or type(cause).__name__).splitlines()[0][:200]


def _has_records(file: Path) -> bool:
    """Not empty; a .jsonl's first record is an object (`datasets` would read lines of arrays as a text column)."""
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                if file.suffix == ".jsonl":
                    next(read_jsonl_lines([(number, raw)], file))
                return True
    return False


def read_jsonl_lines(lines, path: Path) -> Iterator[dict]:
    for number, raw in lines:
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM (Windows editors) is accepted
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{number}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield record


def _first_bad_record(files: list[Path]) -> UserError | None:
    """Read the files again, a line at a time, for the first record that can't be read."""
    for file in files:
        try:
            if file.suffix == ".jsonl":
                for _ in read_jsonl(file):
                    pass
            elif file.suffix == ".json":
                data = json.loads(_read_text(file))
                if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                    return UserError(f"{file}: a .json data file must hold a list of objects")
            elif file.suffix == ".txt":
                with open(file, "rb") as f:
                    for number, raw in enumerate(f, start=1):
                        try:
                            raw.decode("utf-8")
                        except UnicodeDecodeError as e:
                            return UserError(f"{file}:{number}: not valid UTF-8 (byte {e.start} of the line)")
        except json.JSONDecodeError as e:
            return UserError(f"{file}:{e.lineno}: malformed JSON ({e.msg})")
        except UserError as e:
            return e
    return None


_DIGESTS: dict[tuple, str] = {}  # (file, size, mtime) -> sha256: each file is read once per process


def file_digest(file: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks; a text file is checked to be UTF-8 on the way (pyarrow's JSON reader
    would take Latin-1 bytes silently): a bad byte is one line naming the file and the line."""
    stat = file.stat()
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h, decoder, lines = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")(), 1
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                if file.suffix in TEXT_SUFFIXES:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as e:
                        line = lines + chunk[:e.start].count(b"\n")
                        raise UserError(f"{file}:{line}: not valid UTF-8 (byte {chunk[e.start:e.start + 1]!r})") from None
                    lines += chunk.count(b"\n")
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def fingerprint_files(path: str | Path) -> str:
    """sha256 over the files' names and contents."""
    h = hashlib.sha256()
    for file in _local_files(resolve_path(path)):
        h.update(file.name.encode())
        h.update(file_digest(file).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# sources


def load_source(spec: DataArgs) -> tuple[Dataset, Provenance]:
    """The recipe's data as a Dataset: local `path`, else Hub `dataset`, else (offline) the bundled `fallback`."""
    if spec.path:
        ds, prov = load_local(spec.path), Provenance(source=spec.path, fingerprint=fingerprint_files(spec.path))
    elif spec.dataset:
        ds, prov = _load_hub_or_fallback(spec)
    elif spec.fallback:
        ds, prov = load_local(spec.fallback), Provenance(source=spec.fallback, fingerprint=fingerprint_files(spec.fallback))
    else:
        raise UserError("the recipe names no data: set data.dataset, data.path or data.fallback")
    if spec.max_samples is not None and len(ds) > spec.max_samples:
        ds = ds.select(range(spec.max_samples))
        prov.notes.append(f"capped at data.max_samples={spec.max_samples}")
    prov.records = len(ds)
    return ds, prov


def _load_hub_or_fallback(spec: DataArgs) -> tuple[Dataset, Provenance]:
    from datasets import load_dataset

    ds, prov = load_or_fallback(
        "data", spec.dataset, lambda: load_dataset(spec.dataset, spec.subset, split=spec.split),
        fallback=spec.fallback, load_fallback=(lambda: load_local(spec.fallback)) if spec.fallback else None,
        fallback_key="data.fallback")
    prov.fingerprint = fingerprint_files(spec.fallback) if prov.fallback else ds._fingerprint
    return ds, prov


# ----------------------------------------------------------------------------------------------------------------
# records -> texts -> token blocks


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def to_texts(ds: Dataset, spec: DataArgs, source: str = "data") -> Dataset:
    """Render each record through `data.template` (after `data.columns` renames) into a `text` column."""
    return render(ds, spec, {"text": spec.template}, source)


def render(ds: Dataset, spec: DataArgs, templates: dict[str, str], source: str = "data") -> Dataset:
    """One output column per template (`text`; or `prompt` + `completion`; or `prompt` + `chosen` + `rejected`),
    each rendered from the record's fields after `data.columns` renames. Records with an empty output are dropped."""
    mapping = {name: spec.columns.get(name, name) for t in templates.values() for name in template_fields(t)}
    for name, column in mapping.items():
        if column not in ds.column_names:
            raise UserError(f"{source}: missing column '{column}' (template field '{name}'); "
                            f"columns are {', '.join(ds.column_names)}; map it with data.columns.{name}=<column>")

    def one(column: str, template: str, values: dict) -> str:
        if not any(values[n] for n in template_fields(template)):
            return ""
        text = template.format(**values)  # a prompt keeps its trailing newline after the answer marker
        return text.strip() if column == "text" else text

    def rows(batch: dict) -> dict:
        n = len(batch[ds.column_names[0]])
        out: dict[str, list[str]] = {column: [] for column in templates}
        for i in range(n):
            values = {name: "" if batch[col][i] is None else str(batch[col][i]) for name, col in mapping.items()}
            if spec.strip:
                values = {name: value.strip() for name, value in values.items()}
            for column, template in templates.items():
                out[column].append(one(column, template, values))
        return out

    out = ds.map(rows, batched=True, remove_columns=ds.column_names, desc="rendering texts",
                 num_proc=num_proc_for(len(ds), spec.num_proc))
    for column in templates:  # (arrow compute over the column: the corpus never becomes Python strings at once)
        lengths = pc.utf8_length(out.data.column(column))
        if (pc.max(lengths).as_py() or 0) > spec.max_chars:
            first = pc.index(pc.greater(lengths, spec.max_chars), True).as_py()
            raise UserError(f"{source}: record {first} has {lengths[first].as_py()} characters, over "
                            f"data.max_chars={spec.max_chars} (a file without line breaks?)")
    before = len(out)
    out = out.filter(lambda b: [all(b[c][i] for c in templates) for i in range(len(b[next(iter(templates))]))],
                     batched=True, desc="dropping empty texts", num_proc=num_proc_for(len(out), spec.num_proc))
    if len(out) == 0:
        raise UserError(f"{source}: every record renders to an empty text with {templates}")
    if len(out) < before:
        warnings.warn(f"{source}: dropped {before - len(out)} records with an empty {' or '.join(templates)}")
    return out


def split_train_eval(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Deterministic shuffle-and-split; at least one record on each side when a split is asked for."""
    if fraction <= 0:
        return ds, None
    if len(ds) < 2:
        raise UserError(f"need at least 2 records to hold out a validation split, got {len(ds)}")
    n_eval = max(1, round(len(ds) * fraction))
    parts = ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def sample_for_eval(rows: Dataset, columns: list[str], max_chars: int, seed: int) -> Dataset:
    """A seeded random choice of records, spread over the whole split, holding about `max_chars` characters (all
    of them when the split is smaller): what the final evaluation of a huge corpus reads, in bounded time."""
    lengths = []
    for batch in rows.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
        lengths.append(sum(pc.utf8_length(batch.column(c)).to_numpy(zero_copy_only=False) for c in columns))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    if lengths.sum() <= max_chars:
        return rows
    order = np.random.default_rng(seed).permutation(len(lengths))
    n = int(np.searchsorted(np.cumsum(lengths[order]), max_chars)) + 1
    return rows.select(np.sort(order[:n]))


def num_proc_for(rows: int, asked: int | None = None) -> int | None:
    """Worker processes for a map over `rows` records: the recipe's data.num_proc, else one per core (at most 8)
    once there is enough to share (a pool costs seconds to start)."""
    if asked is not None:
        return asked if asked > 1 else None
    return min(os.cpu_count() or 1, 8) if rows >= 20_000 and (os.cpu_count() or 1) > 1 else None


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pack(texts: Dataset, tokenizer, block_size: int, name: str = "train", add_bos: bool = False,
         num_proc: int | None = None) -> Dataset:
    """Tokenise texts (worker processes for a big corpus), end each with EOS (and start it with BOS when asked), and
    cut the stream into `block_size` blocks (the remainder is dropped): packing, so no position is spent on padding.
    Both steps are cached by `datasets` under a fingerprint of the texts, the tokenizer and the settings, so a
    second run over the same corpus starts at once."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no eos_token; packing needs one to separate documents")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    if add_bos and not bos:
        raise UserError("data.add_bos: the tokenizer has no bos_token")
    key = hashlib.sha256(f"{texts._fingerprint}|{tokenizer_digest(tokenizer)}|{block_size}|{bool(bos)}".encode())

    def tokenize(batch: dict) -> dict:
        ids = [bos + x + [eos] for x in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    def group(batch: dict) -> dict:
        stream = [t for ids in batch["input_ids"] for t in ids]
        usable = len(stream) // block_size * block_size
        return {"input_ids": [stream[i:i + block_size] for i in range(0, usable, block_size)]}

    tokens = texts.map(tokenize, batched=True, remove_columns=texts.column_names, desc=f"tokenizing {name}",
                       num_proc=num_proc_for(len(texts), num_proc), new_fingerprint=key.hexdigest()[:32] + "t")
    total = pc.sum(tokens.data.column("length")).as_py() or 0
    if total < block_size:
        raise UserError(f"{name} split has {total} tokens, fewer than data.block_size={block_size}; "
                        f"lower block_size or add data")
    # groups of 1,000 documents (each group's last partial block is dropped): a few MB of token lists at a time
    return tokens.map(group, batched=True, batch_size=1_000, remove_columns=["length"],
                      desc=f"packing {name} into {block_size}-token blocks", new_fingerprint=key.hexdigest()[:32] + "p")


def corpus_iterator(texts: Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of texts without materialising the whole corpus (tokenizer training on large data)."""
    for start in range(0, len(texts), batch_size):
        yield texts[start:start + batch_size]["text"]
