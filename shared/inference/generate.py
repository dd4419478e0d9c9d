"""Generation shared by every model: run folder -> model + tokenizer -> the model's decoding preset -> text.

The preset is the recipe's `generation` section, saved with the run (final/recipe.yaml, and as the model's own
generation_config.json); command-line `key=value` pairs override it (`temperature=0.7 max_new_tokens=80`), checked
against GenerationConfig like the recipe's own keys; `--prompt` (or the SLM_PROMPT environment variable, which is how
`make generate PROMPT=...` hands text over without a shell re-parsing it) replaces the preset's prompts. Tokens
stream to the terminal as they are produced (except under beam search, which has no single stream).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor, TextStreamer
from transformers.generation.logits_process import LogitsProcessorList, NoRepeatNGramLogitsProcessor

from shared.config import catalog
from shared.config.errors import UserError, run_main
from shared.config.runs import find_run
from shared.models.registry import context_length
from shared.config.recipe import PRESET_ONLY, check_generation_keys, parse_override


def damaged_file(path: Path) -> str | None:
    """The first file of a final/ folder that can't be read whole, with what is wrong with it."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                return f"{file} is damaged (not valid JSON: {str(e).splitlines()[0][:80]})"
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError):
            return f"{file} is damaged (unreadable header, {size:,} bytes)"
        if size < end:
            return f"{file} is damaged (truncated: {size:,} of {end:,} bytes)"
    return None


def load(path: Path):
    """Model (on GPU when there is one), tokenizer and the resolved recipe saved with the run."""
    recipe = {}
    if (path / "recipe.yaml").is_file():
        recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8")) or {}
    trust_remote_code = bool((recipe.get("model") or {}).get("trust_remote_code"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:
        problem = damaged_file(path)
        if problem is None:
            raise
        raise UserError(f"{problem}: rerun the stage that wrote it (it rebuilds final/ from its last complete "
                        f"checkpoint), or delete {path.parent} and train again") from e
    return model.to(device).eval(), tok, recipe


def prompt_budget(config, max_new_tokens: int | None) -> int | None:
    """Tokens a prompt may take so that `max_new_tokens` still fit the model's context (None: no limit known)."""
    limit = context_length(config)
    return limit - (max_new_tokens or 0) if limit else None


def load_tokenizer_and_budget(path: Path, max_new_tokens: int | None):
    """(tokenizer, prompt budget) of a saved model, without loading its weights."""
    from transformers import AutoConfig

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
    except Exception as e:
        problem = damaged_file(path)
        if problem is None:
            raise
        raise UserError(f"{problem}: rerun the stage that wrote it") from e
    return tok, prompt_budget(config, max_new_tokens)


def check_prompts(preset: dict, tokenizer, where: str = "generation.prompts", context: int | None = None) -> None:
    """Every preset prompt must encode and fit the context (checked before a run trains, so its samples can't fail
    after it): one line naming the prompt and the character the tokenizer can't encode (a char-level vocabulary
    has no [UNK]). A prompt that only becomes [UNK] still works; it is said, not refused."""
    for i, prompt in enumerate(preset.get("prompts") or []):
        try:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        except Exception:  # tokenizers' own error names no character
            bad = next((c for c in prompt if not _encodes(tokenizer, c)), None)
            raise UserError(f"{where}: generation.prompts[{i}] {prompt!r} has {bad!r}, which the tokenizer cannot "
                            f"encode (not among its {len(tokenizer)} tokens); change the prompt or the tokenizer's "
                            f"corpus") from None
        if context is not None and len(ids) >= context:
            raise UserError(f"{where}: generation.prompts[{i}] is {len(ids)} tokens, the model's context is "
                            f"{context}; shorten the prompt")
        unk = tokenizer.unk_token_id
        if unk is not None and unk in ids and tokenizer.unk_token not in prompt:
            print(f"note: {where}: generation.prompts[{i}] {prompt!r} has characters the tokenizer reads as "
                  f"{tokenizer.unk_token}", flush=True)


def _encodes(tokenizer, text: str) -> bool:
    try:
        tokenizer(text, add_special_tokens=False)
        return True
    except Exception:
        return False


def generation_config(preset: dict, tokenizer, where: str = "generation preset") -> GenerationConfig:
    """The preset (prompts aside) as a GenerationConfig with the tokenizer's special ids; bad values: one line."""
    check_generation_keys(preset, where)
    kwargs = {k: v for k, v in preset.items() if k not in PRESET_ONLY}
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
    try:
        config = GenerationConfig(**kwargs)
        config.validate()  # flags that don't apply (length_penalty without beams) only warn
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return config


class NoRepeatInAnswer(LogitsProcessor):
    """transformers' no_repeat_ngram_size applied to the generated tokens only. Its own processor also counts the
    prompt's n-grams, so a model asked to quote its background is forbidden to; this one stops runaway repetition
    ("1000000...", a clause over and over) in the answer and nothing else. Make one per generate() call: the
    length it first sees is the prompt's."""

    def __init__(self, n: int):
        self.inner, self.start = NoRepeatNGramLogitsProcessor(n), None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        return self.inner(input_ids[:, self.start:], scores)


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each token id stands for (b"" for special tokens): byte-level BPE vocabularies spell bytes with
    GPT-2's printable table; any other token is its decoded text."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = {c: b for b, c in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    out = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or piece is None:
            out.append(b"")
        elif all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


def whole_characters(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


CLAUSE_ENDS = tuple(c.encode() for c in "，。；：！？、\n")
SENTENCE_ENDS = tuple(c.encode() for c in "。！？")


def first_character_probability(model, tokenizer, prompt: str, text: str, table: list[bytes] | None = None) -> float:
    """The model's probability that its answer to `prompt` begins with the first character of `text`: the product
    of the probabilities of the tokens that spell that character (a byte-level BPE may need two or three), read
    from one forward pass over the prompt and all but the last of them. `table`: token_bytes(tokenizer), if made."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    wanted = tokenizer(text, add_special_tokens=False).input_ids
    table, spelled, n = table or token_bytes(tokenizer), b"", 0
    while n < len(wanted) and not (spelled and whole_characters(spelled)):
        spelled, n = spelled + table[wanted[n]], n + 1
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor([ids + wanted[:n - 1]], device=device)).logits[0, len(ids) - 1:]
    logp = torch.log_softmax(logits.float(), -1)
    return float(torch.exp(sum(logp[i, t] for i, t in enumerate(wanted[:n]))))


class QuoteFromSources(LogitsProcessor):
    """Extractive decoding: the answer is one contiguous span of one of the `sources` (the retrieved chunks), ending
    where a clause of its source ends, then a full stop and EOS; or, with `refuse`, the `refusal` sentence ("not in
    the background"). The model still chooses where the quote starts, which occurrence it follows and when it
    stops; it can't write what its sources don't say, nor loop. Whether to refuse is decided before decoding, from
    the model's own probability of the refusal's first character (first_character_probability against the
    recipe's threshold, SQuAD 2.0's no-answer rule), so that beams never weigh a fixed, easily predicted sentence
    against a quote. Make one per generate() call: the length it first sees is the prompt's."""

    def __init__(self, tokenizer, sources: list[str], refusal: str = "", refuse: bool = False,
                 table: list[bytes] | None = None):
        self.table = table or token_bytes(tokenizer)
        self.first: dict[int, list[int]] = {}
        for i, piece in enumerate(self.table):
            if piece:
                self.first.setdefault(piece[0], []).append(i)
        # (source, the byte offsets a quote may begin at: any character's, i.e. no UTF-8 continuation byte 0x80-0xBF;
        # the refusal's first)
        encoded = [src.encode("utf-8") for src in sources if src]
        self.sources = ([(refusal.encode("utf-8"), [0])] if refuse else
                        [(src, [i for i, b in enumerate(src) if not 0x80 <= b < 0xC0]) for src in encoded])
        self.stops = [i for i, piece in enumerate(self.table) if piece == "。".encode()]
        self.eos, self.start, self.refuse = tokenizer.eos_token_id, None, refuse

    def ends(self, said: bytes) -> list[tuple[bytes, int]]:
        """(source, where `said` ends in it) for every place `said` is quoted from one of the allowed starts."""
        return [(src, at + len(said)) for src, starts in self.sources for at in starts if src.startswith(said, at)]

    def ends_a_clause(self, said: bytes) -> bool:
        """A quote may stop where its source's clause ends (as the training answers do), not mid-clause; the
        refusal only where it ends."""
        if self.refuse:
            return any(end == len(src) for src, end in self.ends(said))
        return said.endswith(CLAUSE_ENDS) or any(end == len(src) or src[end:].startswith(CLAUSE_ENDS)
                                                 for src, end in self.ends(said))

    def allowed(self, said: bytes) -> list[int]:
        ends = [(src, end) for src, end in self.ends(said) if end < len(src)]
        return sorted({t for src, end in ends for t in self.first.get(src[end], ())
                       if src.startswith(self.table[t], end)})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            said = b"".join(self.table[i] for i in ids)
            allowed = self.allowed(said)
            if said.endswith(SENTENCE_ENDS):  # one sentence at most: a quote, not a passage
                allowed = []
            elif said and whole_characters(said) and self.ends_a_clause(said):  # never inside a character
                allowed.append(self.eos)
                if not said.endswith("。".encode()):
                    allowed.extend(self.stops)
            mask[row, allowed or [self.eos]] = 0
        return scores + mask


def answer_processors(preset: dict) -> dict:
    """generate() keyword arguments for the preset's own keys (fresh objects: call once per generation)."""
    n = preset.get("answer_no_repeat_ngram_size")
    return {"logits_processor": LogitsProcessorList([NoRepeatInAnswer(int(n))])} if n else {}


def generate(model, tokenizer, prompt: str, preset: dict, stream: bool = False) -> str:
    """Complete `prompt` with the preset; returns the prompt plus its continuation, as text."""
    config = generation_config(preset, tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]])
    limit = context_length(model.config)
    if limit is not None:
        if ids.shape[1] >= limit:
            raise UserError(f"prompt is {ids.shape[1]} tokens, the model's context is {limit}; shorten the prompt")
        room = limit - ids.shape[1]
        if config.max_length is not None and "max_new_tokens" not in preset:
            config.max_length = min(config.max_length, limit)
        if (config.max_new_tokens or 0) > room:
            config.max_new_tokens = room
        if config.min_new_tokens and config.min_new_tokens > room:
            config.min_new_tokens = room
    ids = ids.to(model.device)
    streamer = None
    if stream and (config.num_beams or 1) == 1:
        print(prompt, end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer,
                             **answer_processors(preset))
    text = prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if stream and streamer is None:
        print(text, flush=True)
    elif stream:
        print(flush=True)
    return text


def samples_markdown(model, tokenizer, preset: dict, seed: int = 0) -> str:
    """Generate every preset prompt (seeded) and format them for train_log.md."""
    torch.manual_seed(seed)
    blocks = []
    for prompt in preset.get("prompts", []):
        text = generate(model, tokenizer, prompt, preset)
        label = prompt if prompt.strip() else repr(prompt)  # nanoGPT's start "\n" shown as '\n', not a blank
        blocks.append(f"**{label}**\n\n```text\n{text.strip()}\n```")
    return "\n\n".join(blocks) or "(the preset has no prompts)"


def run_parser(description: str, model_name: str | None, models: str) -> argparse.ArgumentParser:
    """The arguments every command that opens a trained run shares (generate, chat, the web UI)."""
    parser = argparse.ArgumentParser(description=description)
    if model_name is None:
        parser.add_argument("model", help=models)
    parser.add_argument("--run", default=os.environ.get("SLM_RUN") or None,
                        help="run name under runs/<model>/ or a folder (default: newest)")
    parser.add_argument("--root", default="runs", help="runs folder (default: runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="generation key=value (e.g. temperature=0.7)")
    return parser


def preset_overrides(args, where: str) -> dict:
    """The command line's generation key=value pairs, checked against GenerationConfig before anything loads."""
    overrides = dict(parse_override(text) for text in args.overrides)
    overrides = {key.removeprefix("generation."): value for key, value in overrides.items()}
    check_generation_keys(overrides, where)
    return overrides


def open_run(args, model_name: str | None, overrides: dict):
    """(final folder, model, tokenizer, preset = the run's recipe preset + the command line's overrides)."""
    if model_name is None:
        catalog.check(args.model, args.root)
    path = find_run(model_name or args.model, args.run, args.root)
    model, tok, recipe = load(path)
    torch.manual_seed(args.seed)
    return path, model, tok, {**(recipe.get("generation") or {}), **overrides}


def main(argv: list[str], model_name: str | None = None) -> None:
    parser = run_parser("Generate with a trained slm model and its decoding preset.", model_name,
                        f"{catalog.choices()} (or a folder under runs/)")
    parser.add_argument("--prompt", action="append",
                        help="prompt (repeatable; default: $SLM_PROMPT, else the preset's prompts)")
    args = parser.parse_args(argv)
    path, model, tok, preset = open_run(args, model_name, preset_overrides(args, "generate"))
    prompts = args.prompt or ([os.environ["SLM_PROMPT"]] if os.environ.get("SLM_PROMPT") else None) \
        or preset.get("prompts") or [""]
    print(f"model: {path}  |  preset: " + ", ".join(f"{k}={v}" for k, v in preset.items() if k != "prompts"), flush=True)
    for prompt in prompts:
        print("-" * 60, flush=True)
        generate(model, tok, prompt, preset, stream=True)


def run(model_name: str) -> None:
    """A model folder's generation script (train_phi3/generate.py: `generate.run("phi3")`); errors: one line, exit 2."""
    run_main(lambda argv: main(argv, model_name))
