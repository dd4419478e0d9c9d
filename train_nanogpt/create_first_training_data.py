"""nanoGPT data: instruction and conversation datasets -> one chat format, or plain text -> token bins (nanoGPT).

    make nanogpt-data        # = python train_nanogpt/create_first_training_data.py recipes/nanogpt/data.yaml
    make nanogpt-shakespeare-data DATA=input.txt   # nanoGPT's shakespeare_char: a text file, one token per character
    python train_nanogpt/create_first_training_data.py data.max_samples=2000 run.output_root=/tmp/runs

1. every source in the recipe's `stage.sources` (its Hub dataset or file, or its bundled fallback, said loudly)
   -> texts through that source's own layout: chat texts
        <user>{prompt}<end>
        <assistant>{response}<end>            (a conversation: one such line per turn, in order)
   or plain text (`text:` a column, or a .txt file read whole or by paragraphs);
2. texts split into train / val (data.validation_fraction): documents shuffled together (stage.seed); a text read
   whole is cut instead, its first part trains and its last part validates (nanoGPT's split of input.txt);
3. GPT-2's BPE (offline: a byte-level BPE trained on the train texts), <user> <assistant> <end> as single tokens;
   or (`stage.char_level`) one token per character of the texts and nothing else (nanoGPT's shakespeare_char);
4. train.bin + val.bin + meta.json (shared/data/bins.py) + the tokenizer -> runs/nanogpt/<run>/final/, with a stage log
   listing each source, the records kept and the tokens per split.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field

from datasets import Dataset, concatenate_datasets

from shared.data import bins
from shared.config import cli
from shared.training import stage
from shared.data.sources import _read_text, fingerprint_files, load_source, split_train_eval
from shared.config.errors import UserError, run_main
from shared.config.files import walk_files
from shared.data.hub import Provenance, warn_loudly
from shared.config.recipe import DataArgs, Recipe, resolve_path
from shared.data.tokenizer import char_tokenizer, load_tokenizer
from shared.training.train import cache_root

ROLES = ("user", "assistant")
END = "<end>"
MARKERS = ["<user>", "<assistant>", END]
READ = ("whole", "paragraphs")  # how `text:` reads a .txt file


@dataclass
class DataStageArgs:
    """The recipe's `stage:` section."""
    sources: list = field(default_factory=list)  # the datasets and their column layouts (see recipes/nanogpt/data.yaml)
    seed: int = 1337  # shuffle before the train/val split
    num_proc: int | None = None  # tokenising processes (None: the CPU count, at most 8)
    char_level: bool = False  # one token per character of the texts, nothing else (nanoGPT's shakespeare_char);
    #                           the recipe's tokenizer section then only adds its special_tokens


@dataclass
class Source:
    """One dataset and how its records become texts (exactly one of prompt+response, turns, transcript, text)."""
    name: str = ""
    hub: str | None = None  # Hub dataset id, tried when the Hub is reachable
    subset: str | None = None
    split: str = "train"
    path: str | None = None  # a local file or folder instead of the Hub
    fallback: dict | None = None  # a bundled file + its own layout, used when the Hub can't be
    prompt: str | list | None = None  # column, or columns joined by a blank line (empty ones left out)
    response: str | None = None
    turns: str | None = None  # column holding a list of messages
    role: str = "role"  # a message's role key
    content: str = "content"  # a message's text key
    roles: dict = field(default_factory=lambda: {"user": "user", "assistant": "assistant"})  # source role -> ours
    transcript: str | None = None  # column holding a whole conversation as text with speaker markers
    speakers: dict = field(default_factory=dict)  # marker -> user | assistant
    text: str | list | None = None  # plain text: a column (or columns joined by a blank line); a .txt file: whole
    #                                 (read as it is, one document) or paragraphs (one per blank-line-separated block)

    @property
    def columns(self) -> list[str]:
        if self.turns:
            return [self.turns]
        if self.transcript:
            return [self.transcript]
        if self.text:  # a .txt file's records have one column, `text`
            return ["text"] if self.text in READ else [self.text] if isinstance(self.text, str) else list(self.text)
        return [*([self.prompt] if isinstance(self.prompt, str) else self.prompt), self.response]

    @property
    def chat(self) -> bool:
        return not self.text


def parse_source(raw: object, where: str, fallback_of: str | None = None) -> Source:
    """A `stage.sources` entry -> Source; anything unknown, missing or contradictory is one line naming the key."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a source is a mapping (hub/path, then prompt+response, turns, transcript or text)")
    known = [f.name for f in dataclasses.fields(Source)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise UserError(f"{where}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    src = Source(**raw)
    src.name = src.name or src.hub or src.path or ""
    layouts = [k for k in ("prompt", "turns", "transcript", "text") if getattr(src, k)]
    if len(layouts) != 1:
        raise UserError(f"{where}: give exactly one layout: prompt + response, turns, transcript or text "
                        f"(got {', '.join(layouts) or 'none'})")
    if src.prompt and not src.response:
        raise UserError(f"{where}: 'prompt' needs 'response' (the column with the answer)")
    if src.transcript and not src.speakers:
        raise UserError(f"{where}: 'transcript' needs 'speakers', e.g. {{'[|Human|]': user, '[|AI|]': assistant}}")
    for key in ("roles", "speakers"):
        bad = [v for v in getattr(src, key).values() if v not in ROLES]
        if bad:
            raise UserError(f"{where}: {key} must map to {' or '.join(ROLES)}, got {bad[0]!r}")
    if not (src.hub or src.path or src.fallback):
        raise UserError(f"{where}: a source needs 'hub' (a Hub dataset id) or 'path' (a local file)")
    if fallback_of is not None:
        if src.hub or src.fallback or not src.path:
            raise UserError(f"{where}: the fallback of {fallback_of} is a local 'path' with its layout, nothing else")
    elif src.fallback is not None:
        src.fallback = parse_source(src.fallback, f"{where}.fallback", fallback_of=src.name)
    return src


# ----------------------------------------------------------------------------------------------------------------
# records -> turns -> chat text


def chat_text(turns: list[tuple[str, str]]) -> str:
    """[(user, a), (assistant, b), ...] -> '<user>a<end>\\n<assistant>b<end>...' (the document's chat format)."""
    return "\n".join(f"<{role}>{text}<end>" for role, text in turns)


def record_turns(record: dict, src: Source) -> list[tuple[str, str]]:
    """A record's (role, text) turns, in order: from the first user turn to the last assistant turn; [] if the
    record has no answered question (empty prompt or response, a conversation without an assistant turn)."""
    if src.turns:
        messages = record[src.turns] or []
        turns = [(src.roles.get(m.get(src.role)), m.get(src.content)) for m in messages if isinstance(m, dict)]
    elif src.transcript:
        markers = "|".join(re.escape(m) for m in sorted(src.speakers, key=len, reverse=True))
        parts = re.split(f"({markers})", record[src.transcript] or "")  # [preamble, marker, text, marker, text...]
        turns = [(src.speakers[parts[i]], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    else:
        columns = [src.prompt] if isinstance(src.prompt, str) else src.prompt
        prompt = "\n\n".join(str(record[c]).strip() for c in columns if record[c] and str(record[c]).strip())
        turns = [("user", prompt), ("assistant", record[src.response])]
    turns = [(role, str(text).strip()) for role, text in turns if role and text and str(text).strip()]
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    answers = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
    if not users or not answers or answers[-1] < users[0]:
        return []
    return turns[users[0]:answers[-1] + 1]


def record_text(record: dict, src: Source) -> str:
    """A plain-text record: its text column(s), joined by a blank line (empty ones left out)."""
    return "\n\n".join(str(record[c]).strip() for c in src.columns if record[c] and str(record[c]).strip())


def to_chat(ds: Dataset, src: Source, where: str) -> Dataset:
    """A source's records -> a `text` column of chat texts, or of plain texts for the `text` layout (+ `source`, and
    `whole`: a text read whole, cut rather than shuffled into a split); empty and unanswered records are dropped."""
    missing = [c for c in src.columns if c not in ds.column_names]
    if missing:
        raise UserError(f"{where} ({src.name}): no column '{missing[0]}'; the data has {', '.join(ds.column_names)}")

    def render(batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        texts = [chat_text(record_turns(r, src)) if src.chat else record_text(r, src) for r in rows]
        return {"text": texts, "source": [src.name] * len(texts), "whole": [src.text == "whole"] * len(texts)}

    if src.text == "whole":  # exactly as read: nanoGPT trains on input.txt character for character
        return Dataset.from_dict({"text": ds["text"], "source": [src.name] * len(ds), "whole": [True] * len(ds)})
    out = ds.map(render, batched=True, remove_columns=ds.column_names, desc=f"texts: {src.name}")
    return out.filter(lambda r: bool(r["text"]), desc="dropping empty and unanswered records")


def read_whole(path: str) -> tuple[Dataset, Provenance]:
    """A .txt file (or a folder's .txt files, in name order) read whole: one record per file, its text unchanged."""
    folder = resolve_path(path)
    files = walk_files(folder, (".txt",)) if folder.is_dir() else [folder]
    if not files or not files[0].is_file():
        raise UserError(f"data not found: {path}" if not folder.exists() else f"{path}: no .txt files in the folder")
    if any(f.suffix != ".txt" for f in files):
        raise UserError(f"{path}: 'text: whole' reads a .txt file; for {folder.suffix} data name its text column "
                        f"(text: <column>)")
    texts = [_read_text(f) for f in files]  # UTF-8 checked: a bad byte is one line naming the file and line
    return Dataset.from_dict({"text": texts}), Provenance(source=path, fingerprint=fingerprint_files(path),
                                                          records=len(texts))


def text_layout_check(src: Source, where: str) -> None:
    """`text: whole | paragraphs` read a .txt file; any other value names columns."""
    if src.text in READ and src.path and resolve_path(src.path).is_file() and resolve_path(src.path).suffix != ".txt":
        raise UserError(f"{where}: 'text: {src.text}' reads a .txt file; {src.path} is not one: name its text column "
                        f"(text: <column>)")


# ----------------------------------------------------------------------------------------------------------------


def load_sources(recipe: Recipe) -> tuple[Dataset, list[dict]]:
    """Every source as texts (its file or Hub dataset, else its bundled fallback, each bundled file used once).
    `data.path` (make's DATA=) replaces the file of a one-source recipe."""
    where = recipe.where("stage.sources")
    if not recipe.stage.sources:
        raise UserError(f"{where}: stage.sources is empty: name at least one dataset and its layout")
    sources = [parse_source(raw, f"{where}: stage.sources[{i}]") for i, raw in enumerate(recipe.stage.sources)]
    if recipe.data.path:
        if len(sources) != 1:
            raise UserError(f"{recipe.where('data.path')}: data.path (DATA=) replaces the file of a one-source recipe; "
                            f"this one has {len(sources)} sources: set each source's path in the recipe")
        sources[0].path = recipe.data.path
    parts, report, used = [], [], {}
    for i, src in enumerate(sources):
        fb = src.fallback
        for s, w in ((src, f"{where}: stage.sources[{i}]"), (fb, f"{where}: stage.sources[{i}].fallback")):
            if s is not None:
                text_layout_check(s, w)
        if src.path and src.text == "whole":
            ds, prov = read_whole(src.path)
        elif src.hub or src.path:
            spec = DataArgs(dataset=src.hub, subset=src.subset, split=src.split, path=src.path,
                            fallback=fb.path if fb else None, max_samples=recipe.data.max_samples)
            ds, prov = load_source(spec)
        else:  # no file given and no Hub dataset: the bundled stand-in, said loudly like every fallback
            reason = "no file given (data.path, make's DATA=, or the source's path)"
            warn_loudly(f"DATA FALLBACK: using {fb.path} instead of {src.name}: {reason}")
            ds, prov = load_source(DataArgs(path=fb.path, max_samples=recipe.data.max_samples))
            prov.fallback, prov.reason = True, f"instead of {src.name}: {reason}"
        if prov.fallback and fb.text == "whole":
            ds = read_whole(fb.path)[0]
        row = {"name": src.name, "source": prov.source, "fallback": prov.fallback, "reason": prov.reason,
               "sha256": prov.fingerprint, "records": len(ds), "kept": 0, "note": ""}
        report.append(row)
        if prov.fallback and prov.source in used:
            row["note"] = f"bundled {prov.source} already included (for {used[prov.source]})"
            continue
        used[prov.source] = src.name
        texts = to_chat(ds, fb if prov.fallback else src,
                        f"{where}: stage.sources[{i}]" + (".fallback" if prov.fallback else ""))
        row["kept"] = len(texts)
        parts.append(texts)
    texts = concatenate_datasets(parts)
    if len(texts) < 2 and not any(texts["whole"]):
        raise UserError(f"{where}: the sources give {len(texts)} text(s); need at least 2 for a train/val split")
    return texts, report


def split(texts: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Documents shuffled (seed) and split by data.validation_fraction; a text read whole is cut instead: its first
    1 - fraction trains and the rest validates, nanoGPT's `data[:int(n * 0.9)]`, `data[int(n * 0.9):]`."""
    whole = texts["whole"]
    docs = texts.select([i for i, w in enumerate(whole) if not w])
    train, val = split_train_eval(docs, fraction, seed) if len(docs) else (docs, docs)
    cut = [r for r in texts.select([i for i, w in enumerate(whole) if w])]
    if not cut:
        return train, val
    heads = Dataset.from_list([{**r, "text": r["text"][:int(len(r["text"]) * (1 - fraction))]} for r in cut])
    tails = Dataset.from_list([{**r, "text": r["text"][int(len(r["text"]) * (1 - fraction)):]} for r in cut])
    return concatenate_datasets([train, heads]), concatenate_datasets([val, tails])


def separator(texts: Dataset, tokenizer) -> list[int]:
    """What follows each document in the bins: EOS; with a char-level vocabulary (no EOS) a blank line, as between
    paragraphs; nothing when every text was read whole (one document: nanoGPT's shakespeare_char bins exactly)."""
    if all(texts["whole"]):
        return []
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    return tokenizer("\n\n", add_special_tokens=False)["input_ids"]


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/nanogpt/data.yaml", __doc__.splitlines()[0], stage=DataStageArgs)
    chat = any(parse_source(raw, f"{recipe.where('stage.sources')}: stage.sources[{i}]").chat
               for i, raw in enumerate(recipe.stage.sources))
    missing = [m for m in MARKERS if m not in recipe.tokenizer.special_tokens]
    if chat and missing:
        raise UserError(f"{recipe.where('tokenizer.special_tokens')}: tokenizer.special_tokens must include "
                        f"{', '.join(MARKERS)} (the chat markers must be single tokens); missing {', '.join(missing)}")
    if recipe.data.validation_fraction <= 0:
        raise UserError(f"{recipe.where('data.validation_fraction')}: data.validation_fraction must be > 0: "
                        f"training evaluates on val.bin")
    if recipe.stage.char_level and recipe.tokenizer.name:
        raise UserError(f"{recipe.where('tokenizer.name')}: stage.char_level builds the tokenizer from the texts; "
                        f"remove tokenizer.name ({recipe.tokenizer.name}) or set stage.char_level=false")
    started = time.perf_counter()
    texts, report = load_sources(recipe)
    train, val = split(texts, recipe.data.validation_fraction, recipe.stage.seed)
    if recipe.stage.char_level:  # the whole corpus's characters (nanoGPT: sorted(set(input.txt))), + "\n" between docs
        tokenizer = char_tokenizer([*texts["text"], *([] if all(texts["whole"]) else ["\n"])],
                                   recipe.tokenizer.special_tokens)
        tok_prov = Provenance(source=f"char-level: one token per character of the texts ({len(tokenizer)} tokens, "
                                     f"stage.char_level)")
    else:
        key = json.dumps([[r["source"], r["sha256"], r["kept"]] for r in report] + [recipe.stage.seed,
                         recipe.data.validation_fraction, recipe.stage.sources], sort_keys=True, default=str)
        tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, train, hashlib.sha256(key.encode()).hexdigest(),
                                             cache_root(recipe))
    marker_ids = [tokenizer.convert_tokens_to_ids(m) for m in MARKERS] if chat else []
    kind = "chat texts" if chat else "texts"
    print(f"{len(train)} train / {len(val)} val {kind}; tokenizer: {tok_prov.describe()} (vocab {len(tokenizer)}"
          + (f", markers {dict(zip(MARKERS, marker_ids))}" if chat else "") + ")")

    title = "nanoGPT chat data: token bins" if chat else "nanoGPT text data: token bins"
    with stage.output(recipe, title, publish_log=opts.publish_log) as out:
        t0 = time.perf_counter()
        layout = {"chat_format": chat_text([("user", "{prompt}"), ("assistant", "{response}")])} if chat else \
            {"layout": "text", "char_level": recipe.stage.char_level}
        meta = bins.write_bins(out.dir, {"train": train, "val": val}, tokenizer, num_proc=recipe.stage.num_proc,
                               tokenizer_source=tok_prov.describe(), sources=report,
                               extra={**layout, "seed": recipe.stage.seed}, separator=separator(texts, tokenizer))
        tokenize_s = time.perf_counter() - t0
        tokenizer.save_pretrained(str(out.dir))  # later stages load the tokenizer from this folder
        splits = meta["splits"]
        out.log.facts.update({
            "sources": f"{len(report)} ({sum(r['fallback'] for r in report)} replaced by bundled files)",
            kind: f"{len(texts)} (train {len(train)}, val {len(val)}; seed {recipe.stage.seed}"
                  + ("; texts read whole are cut, not shuffled" if any(texts["whole"]) else "") + ")",
            "tokenizer": f"{tok_prov.describe()}; vocab {len(tokenizer)}"
                         + "".join(f", {m} = {i}" for m, i in zip(MARKERS, marker_ids)),
            "tokens": ", ".join(f"{name} {s['tokens']:,}" for name, s in splits.items()) + f" ({meta['dtype']})",
            "between documents": tokenizer.decode(meta["separator"]).encode("unicode_escape").decode() or "nothing",
            "time": f"{time.perf_counter() - started:.1f} s ({tokenize_s:.1f} s tokenising)",
        })
        out.log.add_section("Sources", "\n".join(
            ["| source | loaded from | records | kept | note |", "|---|---|---:|---:|---|"]
            + [f"| {r['name']} | {r['source']}{' (OFFLINE FALLBACK)' if r['fallback'] else ''} | {r['records']} "
               f"| {r['kept']} | {r['note'] or r['reason']} |" for r in report]))
        out.log.add_section("Token bins", "\n".join(
            ["| split | documents | tokens | sha256 |", "|---|---:|---:|---|"]
            + [f"| {s['file']} | {s['documents']:,} | {s['tokens']:,} | `{s['sha256'][:16]}` |"
               for s in splits.values()]))
        out.log.add_section("First training text", f"```\n{train[0]['text'][:600]}\n```")


if __name__ == "__main__":
    run_main(main)
