"""Data: Hub id | local file | folder | bundled fallback -> `datasets.Dataset` of texts -> packed token blocks.

Every loader returns the data together with its provenance (where it came from, whether it is the fallback and
why, a content fingerprint and sizes), which the run log records.
"""
from __future__ import annotations

import hashlib
import json
import string
import warnings
from pathlib import Path
from typing import Iterator

from datasets import Dataset

from .errors import UserError
from .hub import Provenance, hub_reachable, load_or_fallback, warn_loudly  # noqa: F401 (re-exported)
from .recipe import DataArgs, resolve_path

LOCAL_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".parquet")


# ----------------------------------------------------------------------------------------------------------------
# local files


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the objects of a JSONL file; a bad line is a UserError naming the file and the line."""
    path = Path(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
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
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise UserError(f"{path}: folder holds no data files ({', '.join(LOCAL_SUFFIXES)})")
        return files
    raise UserError(f"data not found: {path}")


def load_local(path: str | Path) -> Dataset:
    """jsonl / json (list of objects) / txt (one record per blank-line-separated paragraph) / csv / parquet."""
    rows: list[dict] = []
    for file in _local_files(resolve_path(path)):
        if file.suffix == ".jsonl":
            rows.extend(read_jsonl(file))
        elif file.suffix == ".json":
            try:
                data = json.loads(_read_text(file))
            except json.JSONDecodeError as e:
                raise UserError(f"{file}:{e.lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise UserError(f"{file}: a .json data file must hold a list of objects")
            rows.extend(data)
        elif file.suffix == ".txt":
            paragraphs = [p.strip() for p in _read_text(file).split("\n\n")]
            rows.extend({"text": p} for p in paragraphs if p)
        else:
            from datasets import load_dataset

            rows.extend(load_dataset(file.suffix[1:], data_files=str(file), split="train"))
    if not rows:
        raise UserError(f"{path}: empty dataset (no records)")
    try:
        return Dataset.from_list(rows)
    except Exception as e:  # pyarrow schema clash between files / records
        raise UserError(f"{path}: records disagree on their columns' types ({str(e).splitlines()[0]})") from None


def fingerprint_files(path: str | Path) -> str:
    h = hashlib.sha256()
    for file in _local_files(resolve_path(path)):
        h.update(file.name.encode())
        h.update(file.read_bytes())
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

    out = ds.map(rows, batched=True, remove_columns=ds.column_names, desc="rendering texts")
    for column in templates:
        too_long = [i for i, t in enumerate(out[column]) if len(t) > spec.max_chars]
        if too_long:
            raise UserError(f"{source}: record {too_long[0]} has {len(out[too_long[0]][column])} characters, over "
                            f"data.max_chars={spec.max_chars} (a file without line breaks?)")
    before = len(out)
    out = out.filter(lambda r: all(r[c] for c in templates), desc="dropping empty texts")
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


def pack(texts: Dataset, tokenizer, block_size: int, name: str = "train", add_bos: bool = False) -> Dataset:
    """Tokenise texts, end each with EOS (and start it with BOS when asked), and cut the stream into `block_size`
    blocks (the remainder is dropped): packing, so no position is spent on padding."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no eos_token; packing needs one to separate documents")
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    if add_bos and not bos:
        raise UserError("data.add_bos: the tokenizer has no bos_token")

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [bos + x + [eos] for x in ids]}

    def group(batch: dict) -> dict:
        stream = [t for ids in batch["input_ids"] for t in ids]
        usable = len(stream) // block_size * block_size
        blocks = [stream[i:i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks}

    tokens = texts.map(tokenize, batched=True, remove_columns=texts.column_names, desc=f"tokenizing {name}")
    total = sum(len(x) for x in tokens["input_ids"])
    if total < block_size:
        raise UserError(f"{name} split has {total} tokens, fewer than data.block_size={block_size}; "
                        f"lower block_size or add data")
    # groups of 10k documents: small corpora lose no tokens, large ones stay bounded in memory
    blocks = tokens.map(group, batched=True, batch_size=10_000, desc=f"packing {name} into {block_size}-token blocks")
    return blocks


def corpus_iterator(texts: Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of texts without materialising the whole corpus (tokenizer training on large data)."""
    for start in range(0, len(texts), batch_size):
        yield texts[start:start + batch_size]["text"]
