"""Phi-2 Chinese data cleaning: JSONL / .txt sources -> one normalised, de-duplicated `clean.jsonl`.

    make phi2-clean                          # = python train_phi2/clean.py recipes/phi2/clean.yaml
    python train_phi2/clean.py stage.inputs=[my_corpus/] stage.min_chars=50

The Phi-2 document cleans its Chinese corpus before training the tokenizer: a sentence without a full stop gets
one, "。。。。。" becomes "。", text is normalised, and empty, short and duplicate records go. Here each record
passes five rewriting rules, in this order, then three filters (`stage.*` are the recipe's settings):

    invisible   zero-width and control characters dropped; every kind of line break (\\r\\n, \\r, U+2028...) -> \\n
    whitespace  each line stripped; runs of spaces (also U+3000, tabs, NBSP) -> one; spaces between Chinese
                characters/punctuation removed, except in a heading; at most one blank line in a row
    width       full-width letters, digits and symbols -> ASCII (ＡＢ１２ -> AB12) but Chinese punctuation stays
                full-width; half-width , . ; : ? ! after a Chinese character (and before one, a Chinese mark or the
                end of the line) -> ，。；：？！; "(...)" around Chinese -> （...）; "..." after Chinese -> ……
    repeats     runs of one mark collapse: 。。。。。 -> 。, ！！！ -> ！, ，， -> ，; ……… -> ……; ——— -> ——
    full_stop   a line whose last character, looking past closing quotes and brackets, is a Chinese character
                gets 。 (inside the quotes for dialogue: 他说：“走吧” -> 他说：“走吧。”; after them for a quoted
                term: 来自“苇川渡” -> 来自“苇川渡”。). A line ending in ？！…，： or a letter/digit is left alone,
                and so are headings and signatures (...吃饱。——柯满江，电焊工).
    empty / too_short   fewer than `stage.min_chars` non-space characters after cleaning
    exact_dup   the same cleaned text as an earlier record (64-bit BLAKE2b of the text)
    near_dup    MinHash LSH (datasketch): character `stage.shingle_chars`-grams of the text without whitespace,
                `stage.num_perm` permutations, datasketch's bands x rows for Jaccard `stage.near_dup_threshold`; a
                record that shares a band with an earlier kept record is dropped (the first one wins)

A heading is a line of at most 30 characters with none of ，。；？！ that is not a quotation (“...” or 说：“...),
such as 第一章 涨水, a title field or a headline: it gets no full stop and keeps its spaces, which separate its
parts (a short unpunctuated sentence looks the same and is left alone too). Full NFKC is not applied: it would
turn Chinese ，：？！ into ASCII, … into "..." and ℃ into °C.

Streaming: records are read one at a time (a .txt file: paragraphs separated by blank lines, joined until a record
has `stage.txt_record_chars` characters), cut into chunks of `stage.chunk_size` and cleaned by `stage.workers`
processes (multiprocessing Pool.imap, order kept, at most 4 chunks per worker in flight); the main process
de-duplicates and appends each kept record to clean.jsonl as {"text", "source"}. Memory stays bounded except for
the de-duplication state, the only thing that grows with the corpus: one 64-bit hash per distinct text plus one
64-bit hash per LSH band for each kept record (about 0.8 KB per kept record with Python's sets).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, Iterable, Iterator, NamedTuple

from datasketch import MinHash, MinHashLSH
from tqdm import tqdm
from xxhash import xxh32_intdigest

from shared.config import cli
from shared.training import stage
from shared.data.sources import read_jsonl
from shared.data.text import collapse_blank_lines, drop_invisible, squeeze_spaces
from shared.config.errors import UserError, run_main
from shared.config.files import display_path, walk_files
from shared.config.recipe import resolve_path


@dataclass
class CleanArgs:
    inputs: list = field(default_factory=list)  # files or folders: "path" or {path: ..., fields: [...]}
    fields: list = field(default_factory=lambda: ["text"])  # JSONL fields joined (one per line) into the text
    txt_record_chars: int = 0  # .txt: join paragraphs until a record has this many characters; 0 = one each
    min_chars: int = 10  # shorter records (non-space characters, after cleaning) are dropped
    near_dup_threshold: float = 0.8  # Jaccard similarity of the character shingles
    num_perm: int = 128  # MinHash permutations
    shingle_chars: int = 5  # characters per shingle
    workers: int | None = None  # cleaning processes; null = one per CPU core
    chunk_size: int = 256  # records per task sent to a worker


# ----------------------------------------------------------------------------------------------------------------
# the rewriting rules: str -> str, each one idea

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # Chinese characters (a character class)
CN_PUNCT = "，。、；：？！…—·“”‘’「」『』（）《》〈〉【】～"
CLOSERS = "”’」』）》〉】"
OPENING_QUOTE = {"”": "“", "’": "‘", "」": "「", "』": "『"}
HEADING_MAX_CHARS = 30
HEADING_BREAKERS = frozenset("，。；？！,;?!")  # sentence punctuation: a line with one is not a heading
SPEECH = re.compile("^[“「『].*[”」』]$|[：:][“「『]")  # a quoted line, or 说：“...
ATTRIBUTION = re.compile("[。！？…”」]——[^。！？…]*$")  # ...吃饱。——柯满江，电焊工 (a signature: no 。)

SPACE_IN_CHINESE = re.compile(f"(?<=[{CJK}{CN_PUNCT}]) (?=[{CJK}{CN_PUNCT}])")
FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F) if chr(c) not in "！（），：；？～"}
FULLWIDTH.update({0xFF61: "。", 0xFF62: "「", 0xFF63: "」", 0xFF64: "、"})  # half-width CJK marks
FULLWIDTH_RUN = re.compile("[\uff01-\uff5e\uff61-\uff64]+")
TO_CHINESE = str.maketrans(",.;:?!", "，。；：？！")
ASCII_ELLIPSIS = re.compile(f"(?<=[{CJK}{CN_PUNCT}]) *\\.{{3,}}")
ASCII_PUNCT = re.compile(f"(?<=[{CJK}{CLOSERS}]) *([,.;:?!]+) *(?=[{CJK}{CN_PUNCT}]|$)", re.M)
ASCII_PARENS = re.compile(f"(?<![^{CJK}{CN_PUNCT}\n])\\((?=[^()\n]*[{CJK}])([{CJK}{CN_PUNCT}0-9A-Za-z .%-]+)\\)")
REPEATED = re.compile("([。！？，、；：])\\1+")
CJK_CHAR = re.compile(f"[{CJK}]")
WHITESPACE = re.compile(r"\s+")


def is_heading(line: str) -> bool:
    """第一章 涨水, a title or headline: short, no sentence punctuation, not a quotation."""
    return len(line) <= HEADING_MAX_CHARS and not HEADING_BREAKERS.intersection(line) and not SPEECH.search(line)


def normalise_whitespace(text: str) -> str:
    """The shared space rules, plus this stage's own: no space between Chinese characters, except in a heading."""
    lines = []
    for line in text.split("\n"):
        line = squeeze_spaces(line)
        lines.append(line if is_heading(line) else SPACE_IN_CHINESE.sub("", line))
    return collapse_blank_lines("\n".join(lines)).strip("\n")


def normalise_width(text: str) -> str:
    text = FULLWIDTH_RUN.sub(lambda m: m.group().translate(FULLWIDTH), text)
    text = ASCII_PARENS.sub(r"（\1）", text)
    text = ASCII_ELLIPSIS.sub("……", text)
    return ASCII_PUNCT.sub(lambda m: m.group(1).translate(TO_CHINESE), text)


def collapse_repeats(text: str) -> str:
    text = REPEATED.sub(r"\1", text)
    return re.sub("—{3,}", "——", re.sub("…{3,}", "……", text))


def add_full_stops(text: str) -> str:
    return "\n".join(_with_full_stop(line) for line in text.split("\n"))


def _with_full_stop(line: str) -> str:
    body = line.rstrip(CLOSERS)
    if not body or not CJK_CHAR.match(body[-1]) or is_heading(line) or ATTRIBUTION.search(line):
        return line
    tail = line[len(body):]
    if tail and tail[-1] in OPENING_QUOTE:  # dialogue (the line opens the quote, or "说：“"): 。 inside
        start = body.rfind(OPENING_QUOTE[tail[-1]])
        if start == 0 or start > 0 and body[start - 1] in "：:":
            return body + "。" + tail
    return line + "。"


RULES = [  # (name, rule, what the table says it does), applied in this order
    ("invisible", drop_invisible, "zero-width / control characters dropped, line breaks -> \\n"),
    ("whitespace", normalise_whitespace, "lines stripped, space runs -> one, no spaces between Chinese characters"),
    ("width", normalise_width, "full-width letters/digits -> ASCII, half-width punctuation in Chinese -> full-width"),
    ("repeats", collapse_repeats, "repeated punctuation collapsed (。。。。。 -> 。, keeps ……)"),
    ("full_stop", add_full_stops, "。 added to Chinese lines without terminal punctuation"),
]
DROPS = [  # (name, what the table says)
    ("empty", "nothing left after cleaning"),
    ("too_short", "fewer than stage.min_chars non-space characters"),
    ("exact_dup", "same cleaned text as an earlier record"),
    ("near_dup", "MinHash LSH: near-duplicate of an earlier kept record"),
]


def clean_text(text: str) -> tuple[str, list[str]]:
    """The cleaned text and the names of the rules that changed it."""
    changed = []
    for name, rule, _ in RULES:
        new = rule(text)
        if new != text:
            changed.append(name)
            text = new
    return text, changed


# ----------------------------------------------------------------------------------------------------------------
# de-duplication keys, computed in the workers


class Settings(NamedTuple):
    min_chars: int
    shingle_chars: int
    num_perm: int
    bands: int
    rows: int


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@lru_cache(maxsize=None)
def _empty_minhash(num_perm: int) -> MinHash:
    return MinHash(num_perm=num_perm, hashfunc=xxh32_intdigest)  # seed 1: the same permutations in every process


def band_hashes(text: str, s: Settings) -> tuple[int, ...]:
    """MinHash of the character shingles, cut into `bands` bands of `rows` values, one 64-bit hash per band."""
    chars = WHITESPACE.sub("", text)
    n = s.shingle_chars
    shingles = {chars[i:i + n] for i in range(max(1, len(chars) - n + 1))}
    minhash = _empty_minhash(s.num_perm).copy()
    minhash.update_batch([g.encode("utf-8") for g in shingles])
    values = minhash.hashvalues
    return tuple(hash64(values[b * s.rows:(b + 1) * s.rows].tobytes()) for b in range(s.bands))


class Cleaned(NamedTuple):
    source: str
    chars_in: int
    text: str
    changed: list[str]
    dropped: str | None  # "empty" / "too_short", or None
    digest: int = 0
    bands: tuple[int, ...] = ()


def clean_chunk(chunk: list[tuple[str, str]], settings: Settings) -> list[Cleaned]:
    out = []
    for source, raw in chunk:
        text, changed = clean_text(raw)
        size = len(WHITESPACE.sub("", text))
        if size == 0 or size < settings.min_chars:
            out.append(Cleaned(source, len(raw), text, changed, "empty" if size == 0 else "too_short"))
        else:
            out.append(Cleaned(source, len(raw), text, changed, None, hash64(text.encode("utf-8")),
                               band_hashes(text, settings)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# reading: JSONL records and .txt paragraphs, one at a time

MAX_PARAGRAPH_CHARS = 200_000
SUFFIXES = (".jsonl", ".txt")


class Input(NamedTuple):
    path: Path
    fields: list[str]


def files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = walk_files(path, SUFFIXES)
        if not files:
            raise UserError(f"{display_path(path)}: folder holds no .jsonl or .txt files")
        return files
    if not path.is_file():
        raise UserError(f"stage.inputs: {display_path(path)} not found")
    if path.suffix not in SUFFIXES:
        raise UserError(f"stage.inputs: {display_path(path)}: cleaning reads .jsonl and .txt (one paragraph per "
                        f"record)")
    return [path]


def flatten(value: object) -> str:
    """A field's text: a string as it is; a list or an object (encyclopedia sections) all its values, one a line."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(t for t in map(flatten, value) if t)
    if isinstance(value, dict):
        return "\n".join(t for t in map(flatten, value.values()) if t)
    return str(value)


def jsonl_texts(file: Path, fields: list[str], check_within: int = 1000) -> Iterator[str]:
    """A record's fields, one per line. A field that none of the first `check_within` records has is a typo."""
    unseen, first = set(fields), None
    for i, record in enumerate(read_jsonl(file), start=1):
        first = record if first is None else first
        unseen.difference_update(record)
        if unseen and i == check_within:
            _no_field(file, fields, unseen, first, i)
        yield "\n".join(t for t in (flatten(record.get(f)) for f in fields) if t)
    if unseen and first is not None:
        _no_field(file, fields, unseen, first, i)


def _no_field(file: Path, fields: list[str], unseen: set, first: dict, n: int) -> None:
    name = next(f for f in fields if f in unseen)
    close = difflib.get_close_matches(name, list(first), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"{display_path(file)}: none of the first {n:,} records has the field '{name}'{hint}; the "
                    f"first one has {', '.join(first)}; name the text fields with stage.fields or {{path: ..., fields: [...]}}")


def paragraphs(file: Path) -> Iterator[str]:
    lines: list[str] = []
    size = 0
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")  # a BOM: as in .jsonl
            except UnicodeDecodeError as e:
                raise UserError(f"{display_path(file)}:{number}: not valid UTF-8 (byte {e.start})") from None
            if line.strip():
                lines.append(line)
                size += len(line)
                if size > MAX_PARAGRAPH_CHARS:
                    raise UserError(f"{display_path(file)}:{number}: paragraph over {MAX_PARAGRAPH_CHARS:,} "
                                    f"characters; a .txt input holds paragraphs separated by blank lines")
            elif lines:
                yield "\n".join(lines)
                lines, size = [], 0
    if lines:
        yield "\n".join(lines)


def txt_texts(file: Path, record_chars: int) -> Iterator[str]:
    group: list[str] = []
    size = 0
    for paragraph in paragraphs(file):
        group.append(paragraph)
        size += len(paragraph)
        if size >= record_chars:
            yield "\n".join(group)
            group, size = [], 0
    if group:
        yield "\n".join(group)


def read_records(inputs: list[Input], txt_record_chars: int) -> Iterator[tuple[str, str]]:
    """(source, text) for every record of every input, in order, one at a time."""
    for spec in inputs:
        for file in files_of(spec.path):
            texts = txt_texts(file, txt_record_chars) if file.suffix == ".txt" else jsonl_texts(file, spec.fields)
            source = display_path(file)
            for text in texts:
                yield source, text


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Window:
    """Pool.imap reads its whole input ahead in a thread; this lets it run at most `size` chunks ahead."""

    def __init__(self, items: Iterable, size: int):
        self.items, self.slots, self.closed = items, threading.Semaphore(size), threading.Event()

    def __iter__(self) -> Iterator:
        for item in self.items:
            while not self.slots.acquire(timeout=0.1):
                if self.closed.is_set():
                    return
            yield item

    def release(self) -> None:
        self.slots.release()

    def close(self) -> None:
        self.closed.set()


# ----------------------------------------------------------------------------------------------------------------
# the stream: read -> clean in workers -> de-duplicate -> write


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)  # rule or drop name -> records
    sources: dict = field(default_factory=dict)  # source -> [records in, records out, chars in, chars out]

    def add(self, r: Cleaned, kept: bool) -> None:
        self.counts.update(r.changed)
        row = self.sources.setdefault(r.source, [0, 0, 0, 0])
        row[0] += 1
        row[2] += r.chars_in
        if kept:
            row[1] += 1
            row[3] += len(r.text)

    def total(self, column: int) -> int:
        return sum(row[column] for row in self.sources.values())


def clean_stream(records: Iterable[tuple[str, str]], out: IO[str], settings: Settings, workers: int = 1,
                 chunk_size: int = 256, progress: bool = True) -> Tally:
    """Clean `records` into `out` (JSONL, {"text", "source"} per line); the same output for any `workers`."""
    tally = Tally()
    seen: set[int] = set()
    seen_bands: list[set[int]] = [set() for _ in range(settings.bands)]
    work = partial(clean_chunk, settings=settings)
    with ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            window = Window(chunked(records, chunk_size), 4 * workers)
            stack.callback(window.close)  # runs before the pool's exit, which waits for the reading thread
            results = pool.imap(work, window)
        else:
            window, results = None, map(work, chunked(records, chunk_size))
        bar = stack.enter_context(tqdm(desc="cleaning", unit=" records", disable=not progress, mininterval=1))
        for chunk in results:
            if window:
                window.release()
            for r in chunk:
                dropped = r.dropped
                if dropped is None and r.digest in seen:
                    dropped = "exact_dup"
                elif dropped is None and any(h in band for h, band in zip(r.bands, seen_bands)):
                    dropped = "near_dup"
                if dropped:
                    tally.counts[dropped] += 1
                else:
                    seen.add(r.digest)
                    for h, band in zip(r.bands, seen_bands):
                        band.add(h)
                    out.write(json.dumps({"text": r.text, "source": r.source}, ensure_ascii=False) + "\n")
                tally.add(r, kept=not dropped)
            bar.update(len(chunk))
            bar.set_postfix(kept=tally.total(1), refresh=False)
    return tally


# ----------------------------------------------------------------------------------------------------------------
# tables for the terminal and the stage log


def rules_table(tally: Tally) -> str:
    n_in, n_out = tally.total(0), tally.total(1)
    lines = ["| rule | what it does | records changed | records dropped |", "|---|---|---:|---:|",
             f"| (input) | records read | | {n_in:,} in |"]
    lines += [f"| {name} | {what} | {tally.counts[name]:,} | |" for name, _, what in RULES]
    lines += [f"| {name} | {what} | | {tally.counts[name]:,} |" for name, what in DROPS]
    lines.append(f"| (output) | records written to clean.jsonl | | {n_out:,} out |")
    return "\n".join(lines)


def sources_table(tally: Tally) -> str:
    lines = ["| source | records in | records out | characters in | characters out |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {a:,} | {b:,} | {c:,} | {d:,} |" for s, (a, b, c, d) in tally.sources.items()]
    lines.append(f"| **all** | {tally.total(0):,} | {tally.total(1):,} | {tally.total(2):,} | {tally.total(3):,} |")
    return "\n".join(lines)


def detection_table(settings: Settings) -> str:
    """Chance that LSH flags a pair at each Jaccard similarity: 1 - (1 - s^rows)^bands."""
    sims = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    probs = [1 - (1 - s ** settings.rows) ** settings.bands for s in sims]
    return ("| Jaccard similarity | " + " | ".join(f"{s:g}" for s in sims) + " |\n|---|" + "---:|" * len(sims)
            + "\n| chance of being flagged | " + " | ".join(f"{p:.3f}" for p in probs) + " |")


# ----------------------------------------------------------------------------------------------------------------
# the recipe's stage section


def check_args(recipe) -> tuple[list[Input], Settings, int]:
    a: CleanArgs = recipe.stage

    def bad(key: str, msg: str) -> UserError:
        return UserError(f"{recipe.where(f'stage.{key}')}: stage.{key} {msg}")

    if not a.fields or not all(isinstance(f, str) for f in a.fields):
        raise bad("fields", f"must be a list of field names, got {a.fields!r}")
    if not a.inputs:
        raise bad("inputs", "is empty: name at least one .jsonl / .txt file or folder")
    inputs = []
    for entry in a.inputs:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise bad("inputs", f"entries are a path or {{path: ..., fields: [...]}}, got {entry!r}")
        unknown = set(entry) - {"path", "fields"}
        if unknown:
            raise bad("inputs", f"entry {entry['path']}: unknown key '{sorted(unknown)[0]}' (keys: path, fields)")
        fields = entry.get("fields", a.fields)
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise bad("inputs", f"entry {entry['path']}: fields must be a list of field names, got {fields!r}")
        path = resolve_path(entry["path"])
        if not path.exists():
            raise bad("inputs", f"entry {entry['path']}: not found")
        inputs.append(Input(path, fields))
    for key, low in (("min_chars", 0), ("txt_record_chars", 0), ("shingle_chars", 1), ("num_perm", 16),
                     ("chunk_size", 1)):
        if getattr(a, key) < low:
            raise bad(key, f"must be >= {low}, got {getattr(a, key)}")
    if not 0 < a.near_dup_threshold < 1:
        raise bad("near_dup_threshold", f"must be in (0, 1), got {a.near_dup_threshold}")
    if a.workers is not None and a.workers < 1:
        raise bad("workers", f"must be >= 1 or null (one per CPU core), got {a.workers}")
    lsh = MinHashLSH(threshold=a.near_dup_threshold, num_perm=a.num_perm)  # only for its bands x rows
    settings = Settings(a.min_chars, a.shingle_chars, a.num_perm, lsh.b, lsh.r)
    return inputs, settings, a.workers or os.cpu_count() or 1


def main(argv: list[str]) -> None:
    recipe, opts = cli.parse(argv, "recipes/phi2/clean.yaml", __doc__.splitlines()[0], stage=CleanArgs)
    inputs, settings, workers = check_args(recipe)
    a: CleanArgs = recipe.stage
    with stage.output(recipe, "Phi-2 data cleaning", publish_log=opts.publish_log) as out:
        start = time.perf_counter()
        with open(out.dir / "clean.jsonl", "w", encoding="utf-8") as f:
            tally = clean_stream(read_records(inputs, a.txt_record_chars), f, settings, workers, a.chunk_size)
        seconds = time.perf_counter() - start
        table = rules_table(tally)
        print(f"\n{table}\n\n{sources_table(tally)}\n\n{tally.total(0):,} records in, {tally.total(1):,} out, "
              f"{seconds:.1f} s", flush=True)
        if tally.total(0) == 0:
            raise UserError(f"{recipe.where('stage.inputs')}: the input is empty (no record read from "
                            f"{', '.join(display_path(i.path) for i in inputs)})")
        if tally.total(1) == 0:
            raise UserError(f"{recipe.where('stage.inputs')}: no record survived cleaning (table above); "
                            f"check stage.fields and stage.min_chars={a.min_chars}")
        out.log.facts.update({
            "inputs": ", ".join(display_path(i.path) + ("" if i.fields == ["text"] else f" ({' + '.join(i.fields)})")
                                for i in inputs),
            "records": f"{tally.total(0):,} in -> {tally.total(1):,} out (clean.jsonl)",
            "characters": f"{tally.total(2):,} in -> {tally.total(3):,} out",
            "near duplicates": f"MinHash LSH (datasketch), character {settings.shingle_chars}-grams, "
                               f"{settings.num_perm} permutations, {settings.bands} bands x {settings.rows} rows, "
                               f"Jaccard threshold {a.near_dup_threshold}",
            "workers": f"{workers} process{'es' if workers > 1 else ''}, chunks of {a.chunk_size} records",
            "time": f"{seconds:.1f} s ({tally.total(0) / max(seconds, 1e-9):,.0f} records/s)",
        })
        out.log.add_section("Rules: records changed or dropped", table)
        out.log.add_section("Sources", sources_table(tally))
        out.log.add_section("Near-duplicate detection", detection_table(settings))


if __name__ == "__main__":
    run_main(main)
