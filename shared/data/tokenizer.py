"""Tokenizers: the recipe's Hub tokenizer, or one trained here on a stream of text (byte-level BPE or char-level).

The fallback is cached under `<output_root>/.cache/tokenizers/<fingerprint>/`, keyed by the corpus fingerprint and
the tokenizer settings, so a second run on the same data reuses it; the run saves it next to the model either way.

Training (`train_tokenizer`: the Phi-2 tokenizer stage, the nanoGPT and MiniGLM recipes, the fallback above) reads
the corpus as an iterator of text batches, and `tokenizers` counts them in Rust: nothing holds the whole corpus.
What does grow is the trainer's table of distinct pre-tokens ("words"). Chinese has no spaces, so a byte-level
pre-tokenizer makes every clause a word, nearly every clause is new, and the table grows with the corpus: that is
why the original Phi-2 notebook needed > 32 GB for 100M characters. Here a Chinese run is cut into pieces of at
most `max_cjk_chars` characters before the byte-level split (1: one character each, what the fallback does; 2:
pairs, so BPE can still learn two-character words), and the char-level kind makes each character its own word.
Then the table is bounded by the alphabet (or its square), not by the corpus: `make bench-tokenizer` measures it.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import string
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from shared.data.sources import corpus_iterator, read_jsonl
from shared.config.errors import UserError
from shared.data.hub import Provenance, load_or_fallback
from shared.config.recipe import TokenizerArgs, resolve_path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD]
CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]"  # CJK unified ideographs (+ext.)


TokenizerProvenance = Provenance  # the one provenance type (shared/data/hub.py); the old name still works


def load_tokenizer(spec: TokenizerArgs, texts: Dataset | None, corpus_fingerprint: str, cache_root: Path,
                   trust_remote_code: bool = False):
    """Return (tokenizer, provenance): a local folder (an earlier stage's run: its final/), else the Hub id through
    the one Hub-or-bundled path, whose fallback is a BPE trained on `texts` (read only then; cached by fingerprint)."""
    if spec.name:
        local = resolve_path(spec.name)
        if (local / "final" / "tokenizer_config.json").is_file():  # an earlier stage's run folder: its output
            local = local / "final"
        if local.is_dir():
            try:
                tok = AutoTokenizer.from_pretrained(str(local), trust_remote_code=trust_remote_code)
            except Exception as e:
                raise UserError(f"tokenizer.name: cannot load the tokenizer in {local} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
            return with_specials(_ensure_specials(tok), spec), Provenance(source=spec.name)
    key = hashlib.sha256(f"bpe|{spec.vocab_size}|{spec.min_frequency}|{corpus_fingerprint}".encode()).hexdigest()[:20]
    trained = f"a byte-level BPE (vocab {spec.vocab_size}) trained on the run's corpus (cache {key})"

    def fallback():
        if texts is None:
            raise UserError(f"tokenizer: '{spec.name}' can't be loaded, and no corpus was given to train a fallback on")
        folder = cache_root / "tokenizers" / key
        if not (folder / "tokenizer.json").is_file():
            train_bpe(corpus_iterator(texts), spec.vocab_size, spec.min_frequency, folder)
        return PreTrainedTokenizerFast.from_pretrained(str(folder))

    if not spec.name:
        return with_specials(fallback(), spec), Provenance(source=trained, reason="no tokenizer.name in the recipe")
    tok, prov = load_or_fallback(
        "tokenizer", spec.name, lambda: _ensure_specials(AutoTokenizer.from_pretrained(
            spec.name, trust_remote_code=trust_remote_code)),
        fallback=trained, load_fallback=fallback if spec.fallback != "none" else None,
        fallback_key="fallback (tokenizer.fallback is 'none')")
    return with_specials(tok, spec), prov


def train_bpe(batches, vocab_size: int, min_frequency: int, folder: Path) -> PreTrainedTokenizerFast:
    """The offline fallback: a byte-level BPE (like GPT-2's: any text round-trips exactly) with one token per CJK
    character (merges never cross characters, as in the char-level Chinese BERT vocabularies), saved to `folder`."""
    tk = train_tokenizer(batches, "bpe", vocab_size, min_frequency, SPECIAL_TOKENS, max_cjk_chars=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)
    save_atomically(tok, folder)
    return tok


def save_atomically(tok, folder: Path) -> None:
    """`save_pretrained` into a temporary sibling, then rename: a crash never leaves half a tokenizer folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race (or an older folder is there): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def with_specials(tok, spec: TokenizerArgs):
    """The recipe's extra special tokens (chat markers such as <user>, <end>) as single, never-split tokens."""
    missing = [t for t in spec.special_tokens if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def _ensure_specials(tok):
    """Causal LM training needs eos (document separator) and pad; Hub tokenizers (e.g. BERT-style) may lack them."""
    if tok.eos_token is None:
        tok.eos_token = tok.sep_token or EOS
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------------------------------------------
# training from a stream: byte-level BPE or char-level, then a round-trip check that adds what is missing

KINDS = ("bpe", "char")
ANY_CHAR = r"[\s\S]"  # one code point, newlines included (the pattern language is Oniguruma's)
ROLES = {"[PAD]": "pad_token", "[EOS]": "eos_token", "[BOS]": "bos_token", "[UNK]": "unk_token",
         "[SEP]": "sep_token", "[CLS]": "cls_token", "[MASK]": "mask_token"}
ALWAYS = string.printable  # ASCII letters, digits, punctuation and whitespace: never [UNK], whatever the corpus
SFT_MARKERS = ("##提问:", "##回答:")  # the original SFT format: plain text, not special tokens
PROBES = {  # what every trained tokenizer must give back unchanged: decode(encode(text)) == text
    "tab": "列1\t列2\tcol3",
    "newlines": "第一行\n第二行\n\n第四行",
    "spaces": "a b  c   d ",
    "full-width punctuation": "，。！？：；、（）【】《》“”‘’…—～",
    "emoji": "好😀🐟👍🏻！",
    "mixed Chinese/English": "用PyTorch 2.1训练GPT-2，loss=0.35 (OK)。",
    "SFT format": "##提问:\n苇川在哪里？\n##回答:\n在青漪河边。",
}


@dataclass
class TokenizerTraining:
    """The `stage:` section of a tokenizer stage (recipes/phi2/tokenizer.yaml); `make bench-tokenizer` reads it too."""
    input: str = "runs/phi2/clean"  # a stage's run folder (its final/clean.jsonl) or a JSONL file
    text_field: str = "text"  # the JSONL field that holds the text
    kind: str = "bpe"  # bpe: byte-level BPE | char: one token per character
    vocab_size: int = 40960  # bpe: merges stop there; char: the most frequent characters (+ specials)
    min_frequency: int = 100  # bpe: fewest occurrences of a pair to merge; char: of a character to keep
    max_cjk_chars: int = 2  # bpe: Chinese runs are cut into pieces this long (0 = uncut: > 32 GB at 100M chars)
    nfkc: bool = True  # char: NFKC-normalise (full-width punctuation then round-trips through added tokens)
    special_tokens: list[str] = field(default_factory=lambda: ["[PAD]", "[EOS]", "[SEP]", "[BOS]", "[UNK]"])
    model_max_length: int = 512
    max_chars: int | None = None  # read at most this many characters (quick runs); None = all
    heldout_every: int = 100  # every Nth record is kept out of training for tokens/character ...
    heldout_chars: int = 1_000_000  # ... until this many characters are held out
    batch_size: int = 1000  # records per batch handed to the trainer

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"stage.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for key, least in (("vocab_size", 1), ("min_frequency", 0), ("max_cjk_chars", 0), ("model_max_length", 1),
                           ("heldout_every", 0), ("heldout_chars", 0), ("batch_size", 1)):
            if getattr(self, key) < least:
                raise UserError(f"stage.{key} must be >= {least}, got {getattr(self, key)}")
        least = 256 + len(set(self.special_tokens))  # a byte-level BPE starts from every byte and each special token
        if self.kind == "bpe" and self.vocab_size < least:
            raise UserError(f"stage.vocab_size={self.vocab_size} is smaller than a byte-level BPE can be: 256 bytes + "
                            f"{least - 256} special tokens = {least} before any merge; ask for at least {least} "
                            f"(or stage.kind=char for a vocabulary of single characters)")


def new_tokenizer(kind: str, max_cjk_chars: int = 0, nfkc: bool = True):
    """An untrained `tokenizers.Tokenizer`.

    bpe:  byte-level BPE (no prefix space, byte-level decoder): every text round-trips exactly. `max_cjk_chars`
          cuts Chinese runs into pieces of at most that many characters first (0: no cut, the original notebook).
    char: one token per character: NFKC (optional), each character its own pre-token (which covers the notebook's
          punctuation, digit and whitespace splits, and keeps spaces, tabs and newlines as tokens), a word-level
          vocabulary of the most frequent characters, [UNK] for the rest, and a decoder that just concatenates.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if kind == "bpe":
        tk = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if max_cjk_chars:
            cjk = CJK if max_cjk_chars == 1 else f"{CJK}{{1,{max_cjk_chars}}}"
            tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(cjk), behavior="isolated"),
                                                        byte_level])
        else:
            tk.pre_tokenizer = byte_level
        tk.decoder = decoders.ByteLevel()
    elif kind == "char":
        tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        if nfkc:
            tk.normalizer = normalizers.NFKC()
        tk.pre_tokenizer = pre_tokenizers.Split(Regex(ANY_CHAR), behavior="isolated")
        tk.decoder = decoders.Fuse()
    else:
        raise UserError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return tk


def train_tokenizer(batches, kind: str, vocab_size: int, min_frequency: int, special_tokens: list[str],
                    max_cjk_chars: int = 0, nfkc: bool = True):
    """Train on `batches` (an iterator of lists of texts, read once) and return the `tokenizers.Tokenizer`."""
    from tokenizers import pre_tokenizers, trainers

    if kind == "char" and "[UNK]" not in special_tokens:
        raise UserError("a char-level tokenizer needs [UNK] among its special tokens (for unseen characters)")
    tk = new_tokenizer(kind, max_cjk_chars, nfkc)
    if kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special_tokens, show_progress=False)
    tk.train_from_iterator(batches, trainer=trainer)
    return tk


def wrap(tk, special_tokens: list[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A transformers tokenizer: [PAD]/[EOS]/[BOS]/[UNK]/[SEP]... become its pad/eos/bos/unk/sep tokens; decoding
    keeps spaces exactly as they were (no clean-up of spaces before punctuation)."""
    roles = {ROLES[t]: t for t in special_tokens if t in ROLES}
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, **roles)


def char_tokenizer(texts, special_tokens: list[str] = ()) -> PreTrainedTokenizerFast:
    """nanoGPT's shakespeare_char vocabulary: one token per distinct character of `texts` (an iterable of strings,
    read once), ids in sorted order (its `stoi`), then `special_tokens` (e.g. chat markers). Nothing is normalised
    and nothing is added: no [UNK], no EOS, no padding, so a character the corpus lacks cannot be encoded (encoding
    raises; `generate.check_prompts` names the character before a run starts)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise UserError("char-level tokenizer: the corpus has no characters")
    # WordLevel needs an unk token's name; it is not in the vocabulary, so an unseen character is an error, not [UNK]
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(sorted(chars))}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(ANY_CHAR), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False)
    if special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tok


def round_trips(tok, text: str) -> bool:
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def add_missing(tok, texts) -> list[str]:
    """Add every character of `texts` that does not come back from decode(encode(.)) as a token of its own
    (un-normalised: matched before NFKC); returns them. The original added "\t" and "\n" this way. Only the
    char kind ever needs it: characters NFKC changes, and ones the corpus lacks (else [UNK])."""
    from tokenizers import AddedToken

    missing = sorted({c for text in texts for c in text if not round_trips(tok, c)})
    tok.add_tokens([AddedToken(c, normalized=False) for c in missing])
    return missing


def jsonl_texts(path: Path, field: str = "text"):
    """The `field` of each line of a JSONL file, read line by line (a clean.jsonl of any size)."""
    for number, record in enumerate(read_jsonl(path), start=1):
        if not isinstance(record.get(field), str):
            raise UserError(f"{path}:{number}: no text field '{field}' (set stage.text_field)")
        yield record[field]


def text_batches(texts, batch_size: int, heldout: list[str], every: int, heldout_chars: int,
                 max_chars: int | None, seen: dict):
    """Batches of texts for the trainer; every `every`-th text goes to `heldout` instead (until it holds
    `heldout_chars` characters). Counts what went where into `seen`."""
    batch, held = [], 0
    seen.update(records=0, chars=0, heldout_chars=0)
    for i, text in enumerate(texts):
        if max_chars is not None and seen["chars"] + held >= max_chars:
            break
        if every and i % every == every - 1 and held < heldout_chars:
            heldout.append(text)
            held += len(text)
            seen["heldout_chars"] = held
            continue
        batch.append(text)
        seen["records"] += 1
        seen["chars"] += len(text)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def shortfall(cfg: TokenizerTraining, produced: int, chars: int) -> str | None:
    """A warning when the trained vocabulary is far below stage.vocab_size (under 90%): min_frequency or a small
    corpus stopped it, and a model sized for the asked vocabulary would not get it. None when it is close enough."""
    if produced >= 0.9 * cfg.vocab_size:
        return None
    why = (f"merges stopped where no pair of tokens occurs stage.min_frequency={cfg.min_frequency:,} times in the "
           f"{chars:,} characters trained on" if cfg.kind == "bpe" else
           f"only that many distinct characters occur stage.min_frequency={cfg.min_frequency:,} times or more "
           f"in {chars:,} characters")
    return (f"the tokenizer has {produced:,} tokens, {produced / cfg.vocab_size:.0%} of stage.vocab_size="
            f"{cfg.vocab_size:,}: {why}; lower stage.min_frequency or train on more text for a larger vocabulary")


def train_from_texts(texts, cfg: TokenizerTraining) -> tuple[PreTrainedTokenizerFast, dict]:
    """The whole tokenizer stage on an iterator of texts: train, wrap, check the round trips (adding what fails),
    measure on held-out text. Returns the tokenizer and a report (numbers, tables' rows) for the log."""
    heldout, seen = [], {}
    t0 = time.perf_counter()
    tk = train_tokenizer(text_batches(texts, cfg.batch_size, heldout, cfg.heldout_every, cfg.heldout_chars,
                                      cfg.max_chars, seen),
                         cfg.kind, cfg.vocab_size, cfg.min_frequency, cfg.special_tokens, cfg.max_cjk_chars, cfg.nfkc)
    seconds = time.perf_counter() - t0
    if seen["chars"] == 0:
        raise UserError(f"tokenizer: no text to train on in {cfg.input} (field '{cfg.text_field}')")
    tok = wrap(tk, cfg.special_tokens, cfg.model_max_length)
    warning = shortfall(cfg, tok.vocab_size, seen["chars"])
    if warning:
        print(f"warning: {warning}", flush=True)
    added = add_missing(tok, [*PROBES.values(), ALWAYS])
    rows = [(name, text, len(tok(text, add_special_tokens=False)["input_ids"]), round_trips(tok, text))
            for name, text in PROBES.items()]
    ids = [i for enc in tok._tokenizer.encode_batch(heldout, add_special_tokens=False) for i in enc.ids]
    n_held = sum(map(len, heldout))
    return tok, {
        "kind": cfg.kind, "records": seen["records"], "chars": seen["chars"], "seconds": seconds,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "vocab_size": tok.vocab_size,
        "len": len(tok), "added": added, "round_trip": rows, "heldout_chars": n_held,
        "tokens_per_char": len(ids) / n_held if n_held else float("nan"),
        "unk_rate": ids.count(tok.unk_token_id) / len(ids) if ids and tok.unk_token_id is not None else 0.0,
        "markers": {m: marker_tokens(tok, m) for m in SFT_MARKERS}, "warning": warning,
    }


def marker_tokens(tok, marker: str) -> tuple[list[str], bool]:
    """The marker's tokens, and whether it tokenises the same in front of a question (so an SFT loss mask that
    looks for the marker's ids finds them)."""
    alone = tok(marker, add_special_tokens=False)["input_ids"]
    in_text = tok(marker + "\n苇川在哪里？", add_special_tokens=False)["input_ids"]
    return tok.convert_ids_to_tokens(alone), in_text[:len(alone)] == alone
