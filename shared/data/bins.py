"""Token bins: a corpus tokenised once into flat `<split>.bin` arrays, read back as random windows (nanoGPT, MiniGLM).

Writing: every document's ids + EOS are appended to `<split>.bin` (np.uint16 when the vocabulary fits, else
np.uint32); `separator` replaces the EOS (e.g. a blank line for a char-level vocabulary, which has no EOS, or nothing
for one text read whole, as nanoGPT's shakespeare_char writes it). Worker processes tokenise chunks of documents,
read straight from the `datasets.Dataset`; the main process appends each chunk to the file as it comes back, in
order, so memory holds a few chunks, never the corpus.
Each file is written under a temporary name and renamed; `meta.json` (dtype, vocabulary size, token and document
counts, tokenizer, sources, sha256 of the inputs and of each bin) is written last.

Reading: `read_bin` memory-maps a split with the dtype from meta.json and checks its length. `BinWindows` is a
torch Dataset of `block_size + 1`-token windows whose start positions depend only on (seed, index), so a Trainer
resumed from a checkpoint reads exactly the windows an uninterrupted run would (its sampler replays the same
indices). The memmap is opened lazily in each process, so DataLoader workers can pickle the dataset cheaply.
A DataLoader reads a whole batch through `__getitems__` (one gather from the memmap), and `stack_windows` is their
collator: windows need no padding, so no pad token either.

Each item is `input_ids = w[:-1]`, `shift_labels = w[1:]`, `labels = w[:-1]`. transformers' causal-LM loss
(`ForCausalLMLoss`) uses `shift_labels` as the targets when it is given, so all `block_size` positions are trained,
as in nanoGPT. `labels` is what the Trainer needs to compute an eval loss, and it is ignored when `shift_labels`
arrives. Should something drop `shift_labels` (the Trainer's `remove_unused_columns` keeps only the model's
named forward arguments, so set `remove_unused_columns=False`, or name it in the model's forward), the loss is
still right: the model shifts `labels` itself and trains `block_size - 1` positions.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shared.config.errors import UserError
from shared.config.files import atomic_path, atomic_write

META = "meta.json"
CHUNK = 1024  # documents per task sent to a worker

# ----------------------------------------------------------------------------------------------------------------
# writing


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id below `vocab_size`."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)


_worker: dict = {}  # what each tokenising process reads: the splits, the tokenizer, separator, dtype


def _init_worker(splits, tokenizer, text_column: str, separator: list[int], dtype: np.dtype) -> None:
    _worker.update(splits=splits, tokenizer=tokenizer, column=text_column, sep=separator, dtype=dtype)


def _encode(split: str, start: int, stop: int) -> np.ndarray:
    """Documents [start, stop) of a split -> one flat array of their ids, each document followed by the separator."""
    w = _worker
    texts = w["splits"][split][start:stop][w["column"]]
    ids = w["tokenizer"](texts, add_special_tokens=False)["input_ids"]
    sep = w["sep"]
    out = np.empty(sum(len(x) + len(sep) for x in ids), dtype=np.int64)
    at = 0
    for x in ids:
        out[at:at + len(x)] = x
        out[at + len(x):at + len(x) + len(sep)] = sep
        at += len(x) + len(sep)
    if len(out) and (out.min() < 0 or out.max() >= np.iinfo(w["dtype"]).max + 1):
        raise UserError(f"{split}: token id {out.max()} does not fit {w['dtype'].name}; the tokenizer's ids exceed "
                        f"its vocabulary size")
    return out.astype(w["dtype"])


def write_bins(out_dir: str | Path, splits: dict, tokenizer, *, text_column: str = "text",
               num_proc: int | None = None, tokenizer_source: str = "", sources: list[dict] | None = None,
               extra: dict | None = None, separator: list[int] | None = None) -> dict:
    """Tokenise each split (a `datasets.Dataset` with a text column) into `out_dir/<split>.bin` + `meta.json`.

    `sources`: what the texts came from, e.g. [{"source": ..., "sha256": ..., "records": ...}] (recorded as given).
    `num_proc`: tokenising processes (default: the CPU count, at most 8; 1 = in this process). `separator`: the ids
    written after each document (default: [EOS]; [] writes the documents back to back). Returns meta.json's contents.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_token_id
    if separator is None and eos is None:
        raise UserError("the tokenizer has no eos_token; token bins need one to separate documents")
    separator = [eos] if separator is None else list(separator)
    vocab_size = len(tokenizer)
    dtype = dtype_for(max(vocab_size, max(tokenizer.get_vocab().values()) + 1))
    num_proc = num_proc or min(os.cpu_count() or 1, 8)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are the parallelism; no fork warnings
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "eos_token_id": eos, "separator": separator,
            "tokenizer": {"name": tokenizer.name_or_path, "source": tokenizer_source or tokenizer.name_or_path},
            "splits": {}, "sources": sources or [], **(extra or {})}

    init = (splits, tokenizer, text_column, separator, dtype)
    pool = multiprocessing.get_context("fork").Pool(num_proc, _init_worker, init) if num_proc > 1 else None
    if pool is None:
        _init_worker(*init)
    try:
        for name, texts in splits.items():
            if text_column not in texts.column_names:
                raise UserError(f"{name}: no '{text_column}' column to tokenise; columns are "
                                f"{', '.join(texts.column_names)}")
            meta["splits"][name] = _write_split(out_dir / f"{name}.bin", name, len(texts), pool, num_proc)
    finally:
        if pool is not None:
            pool.terminate()
    atomic_write(out_dir / META, json.dumps(meta, ensure_ascii=False, indent=1))
    return meta


def _write_split(path: Path, name: str, n_docs: int, pool, num_proc: int) -> dict:
    """Append the chunks' ids to a temporary file in document order (at most 2 chunks per worker in flight)."""
    sha, tokens = hashlib.sha256(), 0
    tasks = ((name, start, min(start + CHUNK, n_docs)) for start in range(0, n_docs, CHUNK))
    pending: deque = deque()
    bar = tqdm(total=n_docs, desc=f"tokenizing {name}", unit="docs")
    with atomic_path(path) as tmp, open(tmp, "wb") as f, bar:
        def write(ids: np.ndarray, docs: int) -> None:
            nonlocal tokens
            data = ids.tobytes()
            f.write(data)
            sha.update(data)
            tokens += len(ids)
            bar.update(docs)

        for task in tasks:
            if pool is None:
                write(_encode(*task), task[2] - task[1])
                continue
            pending.append((pool.apply_async(_encode, task), task[2] - task[1]))
            if len(pending) >= 2 * num_proc:
                job, docs = pending.popleft()
                write(job.get(), docs)
        while pending:
            job, docs = pending.popleft()
            write(job.get(), docs)
    return {"file": path.name, "tokens": tokens, "documents": n_docs, "sha256": sha.hexdigest()}


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise UserError(f"{path}: missing; token bins need their meta.json (rebuild the data stage)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); rebuild the data stage") from None


def read_bin(path: str | Path) -> np.memmap:
    """A split's tokens as a read-only memmap, with the dtype and length meta.json records for it."""
    path = Path(path)
    meta = read_meta(path.parent)
    split = meta.get("splits", {}).get(path.stem)
    if split is None:
        raise UserError(f"{path}: meta.json has no split '{path.stem}' (it has {', '.join(meta.get('splits', {}))})")
    if not path.is_file():
        raise UserError(f"{path}: missing; meta.json lists it with {split['tokens']} tokens (rebuild the data stage)")
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size
    if size != split["tokens"] * dtype.itemsize:
        raise UserError(f"{path}: {size} bytes, but meta.json says {split['tokens']} {dtype.name} tokens "
                        f"({split['tokens'] * dtype.itemsize} bytes): truncated or from another run; rebuild it")
    if size == 0:
        raise UserError(f"{path}: no tokens")
    return np.memmap(path, dtype=dtype, mode="r")


class BinWindows(torch.utils.data.Dataset):
    """`num_windows` windows of `block_size + 1` tokens from one bin.

    Random (training): window i starts where a hash of (seed, i) says (splitmix64, vectorised over a batch),
    nothing else.
    Tiled (evaluation, `tiled=True`): non-overlapping windows from the start of the file, spread evenly over it when
    `num_windows` is smaller than the number that fit; the same set every time.
    Default `num_windows`: as many as fit end to end (about one pass over the tokens).
    """

    def __init__(self, path: str | Path, block_size: int, num_windows: int | None = None, seed: int = 0,
                 tiled: bool = False):
        self.path, self.block_size, self.seed, self.tiled = Path(path), block_size, seed, tiled
        self.n_tokens = len(read_bin(self.path))
        self.fit = (self.n_tokens - 1) // block_size  # windows that fit end to end
        if self.fit < 1:
            raise UserError(f"{self.path}: {self.n_tokens} tokens, too few for one window of block_size + 1 = "
                            f"{block_size + 1}; lower the block size or add data")
        self.num_windows = num_windows or self.fit
        if tiled:
            self.num_windows = min(self.num_windows, self.fit)
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return self.num_windows

    def start(self, index: int) -> int:
        return int(self.starts(np.array([index]))[0])

    def starts(self, indices: np.ndarray) -> np.ndarray:
        """Where windows `indices` start: tiled, or splitmix64(seed, index) modulo the positions a window fits
        (one array operation for a whole batch; a random generator built per index cost ~40 us each)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.tiled:
            return indices * self.fit // self.num_windows * self.block_size
        x = indices.astype(np.uint64) + (self.seed * 0x9E3779B97F4A7C15) % 2 ** 64  # arrays wrap mod 2**64 silently
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return (x % np.uint64(self.n_tokens - self.block_size)).astype(np.int64)

    def window(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        if self._data is None:  # opened in the process that reads (DataLoader workers included)
            self._data = read_bin(self.path)
        s = self.start(index)
        return np.asarray(self._data[s:s + self.block_size + 1], dtype=np.int64)

    def __getitem__(self, index: int) -> dict:
        w = torch.from_numpy(self.window(index))
        return {"input_ids": w[:-1], "labels": w[:-1].clone(), "shift_labels": w[1:].clone()}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch's windows in one gather from the memmap (what a DataLoader calls instead of __getitem__ per index;
        the same windows). The items are views of that one array: a collator that stacks them copies them anyway."""
        if any(not 0 <= i < self.num_windows for i in indices):
            raise IndexError(next(i for i in indices if not 0 <= i < self.num_windows))
        if self._data is None:
            self._data = read_bin(self.path)
        starts = self.starts(np.asarray(indices))
        w = torch.from_numpy(self._data[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return [{"input_ids": row[:-1], "labels": row[:-1], "shift_labels": row[1:]} for row in w]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}  # never pickle the memmap (it would copy the whole file)


def stack_windows(items: list[dict]) -> dict:
    """The collator for windows: they all have block_size tokens, so a batch is each key stacked (nothing to pad,
    so no pad token is needed, unlike the Trainer's default DataCollatorWithPadding)."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
