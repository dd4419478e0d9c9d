"""Tokenizers: the recipe's Hub tokenizer, or (offline) a byte-level BPE trained on the run's own corpus.

The fallback is cached under `<output_root>/.cache/tokenizers/<fingerprint>/`, keyed by the corpus fingerprint and
the tokenizer settings, so a second run on the same data reuses it; the run saves it next to the model either way.
Training streams the corpus in batches (`tokenizers` works in Rust on an iterator), so memory stays bounded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .data import corpus_iterator, hub_reachable, warn_loudly
from .errors import UserError
from .recipe import TokenizerArgs, resolve_path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD]
CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]"  # CJK unified ideographs (+ext.)


@dataclass
class TokenizerProvenance:
    source: str
    fallback: bool = False
    reason: str = ""

    def describe(self) -> str:
        return self.source + (f" -- OFFLINE FALLBACK: {self.reason}" if self.fallback else "")


def load_tokenizer(spec: TokenizerArgs, texts: Dataset | None, corpus_fingerprint: str, cache_root: Path,
                   trust_remote_code: bool = False):
    """Return (tokenizer, provenance). `texts` (a `text` column) is only read when the fallback must be trained."""
    reason = "no tokenizer.name in the recipe"
    if spec.name:
        local = resolve_path(spec.name)
        if local.is_dir() or hub_reachable():
            try:
                tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else spec.name,
                                                    trust_remote_code=trust_remote_code)
                return with_specials(_ensure_specials(tok), spec), TokenizerProvenance(source=spec.name)
            except Exception as e:
                reason = f"loading '{spec.name}' failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        else:
            reason = f"'{spec.name}' is not a local folder and the Hugging Face Hub is unreachable"
    if spec.fallback == "none":
        raise UserError(f"tokenizer: {reason}, and tokenizer.fallback is 'none'")
    if texts is None:
        raise UserError(f"tokenizer: {reason}, and no corpus was given to train a fallback on")
    key = hashlib.sha256(f"bpe|{spec.vocab_size}|{spec.min_frequency}|{corpus_fingerprint}".encode()).hexdigest()[:20]
    folder = cache_root / "tokenizers" / key
    if spec.name:
        warn_loudly(f"TOKENIZER FALLBACK: {reason}; using a byte-level BPE (vocab {spec.vocab_size}) "
                    f"trained on this run's corpus")
    if not (folder / "tokenizer.json").is_file():
        train_bpe(corpus_iterator(texts), spec.vocab_size, spec.min_frequency, folder)
    tok = with_specials(PreTrainedTokenizerFast.from_pretrained(str(folder)), spec)
    return tok, TokenizerProvenance(source=f"byte-level BPE trained on the run's corpus (cache {key})",
                                    fallback=bool(spec.name), reason=reason)


def train_bpe(batches, vocab_size: int, min_frequency: int, folder: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (like GPT-2's: any text round-trips exactly) and save it atomically to `folder`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    # Each CJK character is its own pre-token, so merges never cross characters: Chinese becomes one token per
    # character seen in the corpus (as with the char-level Chinese BERT vocabularies), never a fragment of one,
    # while other scripts get GPT-2-style word pieces. Byte level underneath: any text still round-trips exactly.
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(batches, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


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
