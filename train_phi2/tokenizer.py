"""Phi-2 Chinese tokenizer: byte-level BPE (vocab 40,960, as the original) or char-level, trained on the cleaned corpus.

    make phi2-tokenizer                                   # recipes/phi2/tokenizer.yaml -> runs/phi2/tokenizer/final/
    python train_phi2/tokenizer.py stage.kind=char stage.input=my.jsonl stage.vocab_size=8000

Reads the cleaning stage's clean.jsonl line by line and trains in a stream (shared/data/tokenizer.py says why the
byte-level BPE cuts Chinese runs into pairs: the original's setting needs > 32 GB at 100M characters). Then every
probe (tab, newline, spaces, full-width punctuation, emoji, mixed text, the SFT format) must come back from
decode(encode(x)) unchanged; characters that don't are added as tokens, so len(tokenizer) can exceed vocab_size:
size the model's embedding with len(tokenizer). The folder loads with AutoTokenizer.from_pretrained.
"""
from __future__ import annotations

from pathlib import Path

from shared.config import cli
from shared.config import errors
from shared.training import stage
from shared.config.files import display_path
from shared.config.recipe import resolve_path
from shared.data.tokenizer import TokenizerTraining, jsonl_texts, train_from_texts
from shared.config.runs import final_of


def corpus_file(cfg: TokenizerTraining) -> Path:
    path = resolve_path(cfg.input)
    return path if path.is_file() else final_of(cfg.input, "stage.input") / "clean.jsonl"


def main(argv: list[str]) -> None:
    recipe, opts = cli.parse(argv, "recipes/phi2/tokenizer.yaml", __doc__.splitlines()[0], stage=TokenizerTraining)
    cfg = recipe.stage
    path = corpus_file(cfg)
    with stage.output(recipe, "Phi-2 tokenizer", publish_log=opts.publish_log) as out:
        tok, r = train_from_texts(jsonl_texts(path, cfg.text_field), cfg)
        tok.save_pretrained(str(out.dir))
        out.log.facts.update({
            "input": f"{display_path(path)} ({r['records']:,} records, {r['chars']:,} characters trained on)",
            "kind": cfg.kind + (f" (byte-level BPE, Chinese runs cut every {cfg.max_cjk_chars} characters)"
                                if cfg.kind == "bpe" else f" (one token per character, NFKC {cfg.nfkc})"),
            "vocab_size": f"{r['vocab_size']:,}", "len(tokenizer)": f"{r['len']:,} (size the embedding with this)",
            "added tokens": ", ".join(repr(t) for t in r["added"]) or "none",
            "tokens per character (held out)": f"{r['tokens_per_char']:.3f} on {r['heldout_chars']:,} characters"
                                               + (f", [UNK] {r['unk_rate']:.3%}" if cfg.kind == "char" else ""),
            "training time": f"{r['seconds']:.1f} s", "peak RSS": f"{r['peak_rss'] / 2**30:.2f} GiB",
        })
        if r["warning"]:
            out.log.facts["warning"] = f"**{r['warning']}**"
        rows = [f"| {name} | `{text!r}` | {n} | {'yes' if ok else '**NO**'} |" for name, text, n, ok in r["round_trip"]]
        out.log.add_section("Round trip: decode(encode(x)) == x",
                            "| probe | text | tokens | round-trips |\n|---|---|---|---|\n" + "\n".join(rows))
        out.log.add_section("SFT markers (plain text, not special tokens)", "\n".join(
            f"- `{m}` -> {toks}" + ("" if same else " (**tokenised differently in front of a question**)")
            for m, (toks, same) in r["markers"].items()))
        failed = [name for name, _, _, ok in r["round_trip"] if not ok]
        if failed:
            raise errors.UserError(f"tokenizer: {', '.join(failed)} do not round-trip even with added tokens")


if __name__ == "__main__":
    errors.run_main(main)
