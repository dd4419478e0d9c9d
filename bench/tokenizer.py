"""Tokenizer training at scale: seconds and peak memory of both kinds on generated Chinese text of any size.

    make bench-tokenizer SIZE=1B        # = python -m bench.tokenizer --chars 1B
    python -m bench.tokenizer --chars 100M --kinds bpe stage.max_cjk_chars=0     # the original's setting

The text comes from `bench.textgen` (an n-gram model of the bundled Chinese text: new sentences at every size),
written once to `runs/bench-tokenizer/corpus-<size>.jsonl` in the cleaning stage's format and reused. Each kind
is then trained by the tokenizer stage's own code (`shared.data.tokenizer.train_from_texts`, the settings of
recipes/phi2/tokenizer.yaml plus overrides) in a fresh process, so peaks don't mix; the parent watches its
memory and stops it above --max-rss (this machine is shared). Every result is appended to results.jsonl and the
table of all of them is rewritten into bench_tokenizer.md (--publish copies it too). Not a test: numbers depend
on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from shared.config.errors import UserError, run_main
from shared.config.files import atomic_path, atomic_write
from shared.config.recipe import load_recipe, resolve_path
from shared.training.runlog import hardware, now_utc

UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}


def parse_size(text: str) -> int:
    """'100M' -> 100_000_000, '1B' or '1G' -> 1_000_000_000, '2.5M', '12345'."""
    t = text.strip().upper()
    unit = t[-1] if t and t[-1] in UNITS and not t[-1].isdigit() else ""
    try:
        n = float(t[: len(t) - len(unit)]) * UNITS[unit]
    except ValueError:
        raise UserError(f"size '{text}' is not a number of characters like 100M, 1B or 250000") from None
    if n < 1:
        raise UserError(f"size '{text}' must be at least 1 character")
    return int(n)


def show_size(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{unit}"
    return str(n)


def corpus(chars: int, seed: int, order: int, folder: Path) -> tuple[Path, float]:
    """The generated corpus of `chars` characters (made once, then reused) and the seconds it took to make."""
    from bench.textgen import NgramModel, bundled_chinese_texts, write_jsonl

    path = folder / f"corpus-{show_size(chars)}-seed{seed}-order{order}.jsonl"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return path, json.loads(meta.read_text())["seconds"]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating {chars:,} characters -> {path}", flush=True)
    t0 = time.perf_counter()
    model = NgramModel.from_texts(bundled_chinese_texts(), order=order)
    with atomic_path(path) as tmp:
        written = write_jsonl(model.generate(chars, seed=seed), tmp)
        assert written == chars, (written, chars)
    seconds = time.perf_counter() - t0
    atomic_write(meta, json.dumps({"chars": chars, "seed": seed, "order": order, "seconds": seconds}))
    return path, seconds


def child(kind: str, path: Path, recipe: str, overrides: list[str], save: Path | None) -> None:
    """Train one kind in this (fresh) process and print its report as one JSON line."""
    from shared.data.tokenizer import TokenizerTraining, jsonl_texts, train_from_texts

    cfg = load_recipe(recipe, overrides, stage=TokenizerTraining).stage
    cfg = replace(cfg, kind=kind, input=str(path))
    tok, r = train_from_texts(jsonl_texts(path, cfg.text_field), cfg)
    if save:
        tok.save_pretrained(str(save))
    r["round_trips"] = all(ok for *_, ok in r.pop("round_trip"))
    r.pop("markers")
    settings = {k: getattr(cfg, k) for k in ("vocab_size", "min_frequency")}
    settings.update({"max_cjk_chars": cfg.max_cjk_chars} if kind == "bpe" else {"nfkc": cfg.nfkc})
    print("RESULT " + json.dumps({**r, "settings": settings}, ensure_ascii=False), flush=True)


def watch(cmd: list[str], max_rss: int, env: dict) -> tuple[dict | None, float, int, str]:
    """Run `cmd`, polling its memory; kill it above `max_rss`. Returns (report, seconds, polled peak, note)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    ps, peak, note = psutil.Process(proc.pid), 0, ""
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > max_rss:
            proc.kill()
            note = f"stopped: RSS passed {max_rss / 2**30:.1f} GiB"
            break
        time.sleep(0.25)
    out = proc.communicate()[0]
    seconds = time.perf_counter() - t0
    report = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None)
    if report is None and not note:
        note = f"failed (exit {proc.returncode})"
    return report, seconds, peak, note


def table(results: list[dict]) -> str:
    lines = ["| kind | characters | settings | train s | peak RSS | vocab_size | len(tokenizer) | tokens/char | "
             "corpus made in | date |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items())
        if r.get("note"):  # stopped or failed: what was seen until then
            numbers = f"> {r['wall']:.0f} | > {r['peak'] / 2**30:.2f} GiB | {r['note']} | | "
        else:
            numbers = (f"{r['seconds']:.0f} | {r['peak_rss'] / 2**30:.2f} GiB | {r['vocab_size']:,} | {r['len']:,} "
                       f"| {r['tokens_per_char']:.3f}")
        lines.append(f"| {r['kind']} | {r['chars']:,} | {settings} | {numbers} | {r['corpus_seconds']:.0f} s "
                     f"| {r['date']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", default="100M", help="characters of generated text: 100M, 1B, 250000 ...")
    parser.add_argument("--kinds", default="bpe,char", help="comma-separated: bpe,char")
    parser.add_argument("--recipe", default="recipes/phi2/tokenizer.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", type=int, default=4, help="n-gram order of the text generator")
    parser.add_argument("--max-rss", default="12G", help="stop a training process above this RSS (12G = 12 GiB)")
    parser.add_argument("--out", default="runs/bench-tokenizer")
    parser.add_argument("--publish", default=None, metavar="PATH", help="also copy the table there")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # kind, in the training subprocess
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. stage.max_cjk_chars=0")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, Path(args.corpus), args.recipe, args.overrides, args.save and Path(args.save))

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("bpe", "char"):
            raise UserError(f"--kinds: unknown kind '{kind}' (bpe, char)")
    from shared.data.tokenizer import TokenizerTraining

    load_recipe(args.recipe, args.overrides, stage=TokenizerTraining)  # a typo fails now, not after the corpus
    chars, folder = parse_size(args.chars), resolve_path(args.out)
    max_rss = parse_size(args.max_rss)
    max_rss = max_rss * 2**30 // 10**9 if args.max_rss[-1:].upper() == "G" else max_rss  # 12G = 12 GiB
    path, corpus_seconds = corpus(chars, args.seed, args.order, folder)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1"}
    for kind in kinds:
        print(f"training {kind} on {chars:,} characters ...", flush=True)
        save = folder / f"{kind}-{show_size(chars)}"
        cmd = [sys.executable, "-m", "bench.tokenizer", "--child", kind, "--corpus", str(path),
               "--recipe", args.recipe, "--save", str(save), *args.overrides]
        report, wall, peak, note = watch(cmd, max_rss, env)
        result = report or {"kind": kind, "chars": chars, "settings": {"overrides": " ".join(args.overrides)}}
        result.update(wall=wall, peak=peak, note=note, corpus_seconds=corpus_seconds, date=now_utc(),
                      hardware=hardware(), command=" ".join(["python -m bench.tokenizer", *argv]))
        with open(folder / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
        print(table([result]), flush=True)
    results = [json.loads(line) for line in (folder / "results.jsonl").open(encoding="utf-8")]
    text = (f"# Tokenizer training at scale\n\nWritten by `bench/tokenizer.py` (`make bench-tokenizer SIZE=...`)"
            f"; {results[-1]['hardware']}. Peak RSS of the training process; generated Chinese text "
            f"(`bench/textgen.py`).\n\n{table(results)}\n")
    (folder / "bench_tokenizer.md").write_text(text, encoding="utf-8")
    print(f"\ntable: {folder / 'bench_tokenizer.md'}")
    if args.publish:
        resolve_path(args.publish).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    run_main(main)
