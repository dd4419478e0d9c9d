"""nanoGPT chat data: instruction and conversation datasets -> one chat format -> token bins (document: nanoGPT).

    make nanogpt-data        # = python train_nanogpt/create_first_training_data.py recipes/nanogpt/data.yaml
    python train_nanogpt/create_first_training_data.py data.max_samples=2000 run.output_root=/tmp/runs

1. every source in the recipe's `stage.sources` (its Hub dataset, or offline its bundled fallback, said loudly)
   -> chat texts through that source's own column layout:
        <user>{prompt}<end>
        <assistant>{response}<end>            (a conversation: one such line per turn, in order)
2. all texts shuffled together (stage.seed) and split into train / val (data.validation_fraction);
3. GPT-2's BPE (offline: a byte-level BPE trained on the train texts), <user> <assistant> <end> as single tokens;
4. train.bin + val.bin + meta.json (shared/bins.py) + the tokenizer -> runs/nanogpt/data/final/, with a stage log
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

from shared import bins, cli, stage
from shared.data import load_source, split_train_eval
from shared.errors import UserError, run_main
from shared.recipe import DataArgs, Recipe
from shared.tokenizer import load_tokenizer
from shared.train import cache_root

ROLES = ("user", "assistant")
END = "<end>"
MARKERS = ["<user>", "<assistant>", END]


@dataclass
class DataStageArgs:
    """The recipe's `stage:` section."""
    sources: list = field(default_factory=list)  # the datasets and their column layouts (see recipes/nanogpt/data.yaml)
    seed: int = 1337  # shuffle before the train/val split
    num_proc: int | None = None  # tokenising processes (None: the CPU count, at most 8)


@dataclass
class Source:
    """One dataset and how its records become chat turns (exactly one of prompt+response, turns, transcript)."""
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

    @property
    def columns(self) -> list[str]:
        if self.turns:
            return [self.turns]
        if self.transcript:
            return [self.transcript]
        return [*([self.prompt] if isinstance(self.prompt, str) else self.prompt), self.response]


def parse_source(raw: object, where: str, fallback_of: str | None = None) -> Source:
    """A `stage.sources` entry -> Source; anything unknown, missing or contradictory is one line naming the key."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a source is a mapping (hub/path, then prompt+response, turns or transcript)")
    known = [f.name for f in dataclasses.fields(Source)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise UserError(f"{where}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    src = Source(**raw)
    src.name = src.name or src.hub or src.path or ""
    layouts = [k for k in ("prompt", "turns", "transcript") if getattr(src, k)]
    if len(layouts) != 1:
        raise UserError(f"{where}: give exactly one layout: prompt + response, turns, or transcript "
                        f"(got {', '.join(layouts) or 'none'})")
    if src.prompt and not src.response:
        raise UserError(f"{where}: 'prompt' needs 'response' (the column with the answer)")
    if src.transcript and not src.speakers:
        raise UserError(f"{where}: 'transcript' needs 'speakers', e.g. {{'[|Human|]': user, '[|AI|]': assistant}}")
    for key in ("roles", "speakers"):
        bad = [v for v in getattr(src, key).values() if v not in ROLES]
        if bad:
            raise UserError(f"{where}: {key} must map to {' or '.join(ROLES)}, got {bad[0]!r}")
    if not (src.hub or src.path):
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


def to_chat(ds: Dataset, src: Source, where: str) -> Dataset:
    """A source's records -> a `text` column of chat texts (+ `source`); unanswered records are dropped."""
    missing = [c for c in src.columns if c not in ds.column_names]
    if missing:
        raise UserError(f"{where} ({src.name}): no column '{missing[0]}'; the data has {', '.join(ds.column_names)}")

    def render(batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        texts = [chat_text(record_turns(r, src)) for r in rows]
        return {"text": texts, "source": [src.name] * len(texts)}

    out = ds.map(render, batched=True, remove_columns=ds.column_names, desc=f"chat texts: {src.name}")
    return out.filter(lambda r: bool(r["text"]), desc="dropping unanswered records")


# ----------------------------------------------------------------------------------------------------------------


def load_sources(recipe: Recipe) -> tuple[Dataset, list[dict]]:
    """Every source as chat texts (its Hub dataset, else its bundled fallback, each bundled file used once)."""
    where = recipe.where("stage.sources")
    if not recipe.stage.sources:
        raise UserError(f"{where}: stage.sources is empty: name at least one dataset and its layout")
    parts, report, used = [], [], {}
    for i, raw in enumerate(recipe.stage.sources):
        src = parse_source(raw, f"{where}: stage.sources[{i}]")
        fb = src.fallback
        spec = DataArgs(dataset=src.hub, subset=src.subset, split=src.split, path=src.path,
                        fallback=fb.path if fb else None, max_samples=recipe.data.max_samples)
        ds, prov = load_source(spec)
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
    if len(texts) < 2:
        raise UserError(f"{where}: the sources give {len(texts)} chat text(s); need at least 2 for a train/val split")
    return texts, report


def main(argv):
    recipe, opts = cli.parse(argv, "recipes/nanogpt/data.yaml", __doc__.splitlines()[0], stage=DataStageArgs)
    missing = [m for m in MARKERS if m not in recipe.tokenizer.special_tokens]
    if missing:
        raise UserError(f"{recipe.where('tokenizer.special_tokens')}: tokenizer.special_tokens must include "
                        f"{', '.join(MARKERS)} (the chat markers must be single tokens); missing {', '.join(missing)}")
    if recipe.data.validation_fraction <= 0:
        raise UserError(f"{recipe.where('data.validation_fraction')}: data.validation_fraction must be > 0: "
                        f"training evaluates on val.bin")
    started = time.perf_counter()
    texts, report = load_sources(recipe)
    train, val = split_train_eval(texts, recipe.data.validation_fraction, recipe.stage.seed)
    key = json.dumps([[r["source"], r["sha256"], r["kept"]] for r in report] + [recipe.stage.seed,
                     recipe.data.validation_fraction, recipe.stage.sources], sort_keys=True, default=str)
    tokenizer, tok_prov = load_tokenizer(recipe.tokenizer, train, hashlib.sha256(key.encode()).hexdigest(),
                                         cache_root(recipe))
    marker_ids = [tokenizer.convert_tokens_to_ids(m) for m in MARKERS]
    print(f"{len(train)} train / {len(val)} val chat texts; tokenizer: {tok_prov.describe()} "
          f"(vocab {len(tokenizer)}, markers {dict(zip(MARKERS, marker_ids))})")

    with stage.output(recipe, "nanoGPT chat data: token bins", publish_log=opts.publish_log) as out:
        t0 = time.perf_counter()
        meta = bins.write_bins(out.dir, {"train": train, "val": val}, tokenizer, num_proc=recipe.stage.num_proc,
                               tokenizer_source=tok_prov.describe(), sources=report,
                               extra={"chat_format": chat_text([("user", "{prompt}"), ("assistant", "{response}")]),
                                      "seed": recipe.stage.seed})
        tokenize_s = time.perf_counter() - t0
        tokenizer.save_pretrained(str(out.dir))  # later stages load the tokenizer from this folder
        splits = meta["splits"]
        out.log.facts.update({
            "sources": f"{len(report)} ({sum(r['fallback'] for r in report)} replaced by bundled files)",
            "chat texts": f"{len(texts)} (train {len(train)}, val {len(val)}; seed {recipe.stage.seed})",
            "tokenizer": f"{tok_prov.describe()}; vocab {len(tokenizer)}; "
                         + ", ".join(f"{m} = {i}" for m, i in zip(MARKERS, marker_ids)),
            "tokens": ", ".join(f"{name} {s['tokens']:,}" for name, s in splits.items()) + f" ({meta['dtype']})",
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
