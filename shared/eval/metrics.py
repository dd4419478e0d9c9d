"""Evaluation metrics shared by the MiniGLM and Phi-2 evaluations: perplexity, Chinese Rouge-L, key recall, and a
QA evaluation that scores only what the model generated.

Perplexity is exp of the mean next-token cross-entropy over every scored token of the held-out set:

    ppl = exp( sum over all scored tokens of -log p(token | tokens before it)  /  number of scored tokens )

The logits at position t predict the token at t+1 (the shift by one), the sum runs over every token rather than
averaging per-batch means (a short last batch would otherwise weigh as much as a full one), and a label of -100
leaves a token out: QA perplexity scores the answer tokens only, never the question the model was given.

    perplexity(model, BinWindows("val.bin", 512, tiled=True))       # examples: padded into batches here
    perplexity(model, answer_only_examples(tok, questions, template)) # answer tokens (+ EOS) only

Rouge-L is the F-measure of the longest common subsequence of two token lists. rouge-score's own tokenizer keeps
only [a-z0-9]+ runs, so every Chinese text is empty to it and scores 0; a whitespace tokenizer makes a whole
unsegmented Chinese answer one token, so the score is all-or-nothing. Here the text is NFKC-normalised and
lower-cased, then each CJK character is one token and each run of other letters/digits one token ("1286平方公里"
-> 1286 平 方 公 里); punctuation and spaces are dropped, as rouge-score drops them for English, so two answers
don't match on their commas. A corpus score is the mean over questions, each question weighing the same.

Key recall asks whether the answer contains the question's key (a number, a name, a date) exactly, after NFKC
(full-width digits and letters -> ASCII), lower-casing and removing whitespace.

The answer is the generated continuation only: the prompt is cut off (a prompt that contains the reference would
otherwise score itself), and the answer stops at EOS or at a stop string.
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from itertools import chain
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from rouge_score.rouge_scorer import RougeScorer
from rouge_score.scoring import Score

from shared.config.errors import UserError

IGNORE = -100  # a label that is not scored (the transformers convention)

# ----------------------------------------------------------------------------------------------------------------
# perplexity


def pad_batch(examples: Sequence[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad examples (1-D input_ids, optional labels / shift_labels) into a batch: padding gets attention 0 and
    label -100, so it is never scored. Without labels, every real token is a target."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
    keys = [k for k in ("labels", "shift_labels") if k in examples[0]]
    for k in keys:
        batch[k] = []
    for e in examples:
        ids = torch.as_tensor(e["input_ids"], dtype=torch.long)
        pad = longest - len(ids)
        batch["input_ids"].append(F.pad(ids, (0, pad), value=pad_token_id))
        batch["attention_mask"].append(F.pad(torch.ones_like(ids), (0, pad), value=0))
        for k in keys:
            batch[k].append(F.pad(torch.as_tensor(e[k], dtype=torch.long), (0, pad), value=IGNORE))
    return {k: torch.stack(v) for k, v in batch.items()}


def _batches(data: Iterable, batch_size: int, pad_token_id: int) -> Iterator[dict]:
    """Batches as given (2-D input_ids, e.g. from a DataLoader), or examples (1-D input_ids) padded into batches."""
    items = iter(data)
    first = next(items, None)
    if first is None:
        return
    items = chain([first], items)
    if torch.as_tensor(first["input_ids"]).dim() == 2:
        yield from items
        return
    chunk: list[dict] = []
    for example in items:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield pad_batch(chunk, pad_token_id)
            chunk = []
    if chunk:
        yield pad_batch(chunk, pad_token_id)


def targets_of(batch: dict) -> tuple[torch.Tensor, slice]:
    """(the token each position predicts, -100 where unscored; the logit positions they belong to).

    shift_labels: already the next tokens (BinWindows gives block_size + 1 tokens, so the last position has one).
    labels: the input ids with -100 where unscored; shifted here. Neither: input_ids, shifted, padding unscored.
    """
    if "shift_labels" in batch:
        return torch.as_tensor(batch["shift_labels"]), slice(None)
    labels = torch.as_tensor(batch["labels"] if "labels" in batch else batch["input_ids"]).clone()
    if batch.get("attention_mask") is not None:
        labels[torch.as_tensor(batch["attention_mask"]) == 0] = IGNORE  # padding is never a target
    return labels[:, 1:], slice(None, -1)


@torch.no_grad()
def token_loss_sum(model, batch: dict) -> tuple[float, int]:
    """(sum of next-token cross-entropies over the batch's scored tokens, how many tokens that is)."""
    device = next(model.parameters()).device
    targets, positions = targets_of(batch)
    targets = targets.to(device)
    ids = torch.as_tensor(batch["input_ids"]).to(device)
    mask = batch.get("attention_mask")
    mask = torch.as_tensor(mask).to(device) if mask is not None else None
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, positions]
    keep = targets != IGNORE
    loss = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    return loss.item(), int(keep.sum())


def perplexity(model, data: Iterable, batch_size: int = 8, pad_token_id: int = 0) -> dict:
    """exp(mean next-token loss) over every scored token of `data`: batches (2-D input_ids, optional
    attention_mask / labels / shift_labels) or examples (1-D), which are right-padded into `batch_size` batches.

    Returns {"perplexity", "loss" (mean nats/token), "tokens" (how many were scored)}."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in _batches(data, batch_size, pad_token_id):
            loss, n = token_loss_sum(model, batch)
            total, count = total + loss, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("perplexity: no tokens to score (empty data, or every label is -100)")
    mean = total / count
    return {"perplexity": math.exp(min(mean, 700.0)), "loss": mean, "tokens": count}


def answer_only_example(tokenizer, prompt: str, answer: str, eos: bool = True) -> dict:
    """input_ids = prompt + answer (+ EOS), labels = -100 on the prompt: only the answer (and its end) is scored.
    Prompt and answer are tokenised separately, so the prompt's tokens are the ones generation starts from."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    a = tokenizer(answer, add_special_tokens=False).input_ids
    if eos and tokenizer.eos_token_id is not None:
        a = a + [tokenizer.eos_token_id]
    if not a:
        raise UserError(f"empty answer for prompt {prompt[:40]!r}")
    return {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}


def answer_only_examples(tokenizer, questions: Iterable[dict], template: str, eos: bool = True) -> list[dict]:
    """One answer-only example per {question, answer} item, its question rendered through `template`."""
    return [answer_only_example(tokenizer, render_prompt(template, q), field(q, "answer"), eos) for q in questions]


# ----------------------------------------------------------------------------------------------------------------
# Rouge-L on Chinese

CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]"  # the ideograph ranges of shared.data.tokenizer
WORD = re.compile(f"{CJK}|[^\\W_{CJK[1:-1]}]+")  # one CJK character, or a run of other letters/digits


class ChineseTokenizer:
    """rouge-score tokenizer (an object with `tokenize(text)`): NFKC, lower case, one token per CJK character, one
    per run of other letters/digits; punctuation, symbols and spaces dropped."""

    def tokenize(self, text: str) -> list[str]:
        return WORD.findall(unicodedata.normalize("NFKC", text).lower())


SCORER = RougeScorer(["rougeL"], tokenizer=ChineseTokenizer())


def rouge_l_score(reference: str, prediction: str) -> Score:
    """Rouge-L (precision, recall, fmeasure) of `prediction` against `reference`, on ChineseTokenizer tokens.
    An empty side (no tokens) scores 0."""
    return SCORER.score(reference, prediction)["rougeL"]


def rouge_l(reference: str, prediction: str) -> float:
    """Rouge-L F-measure: 2 * LCS / (reference tokens + prediction tokens)."""
    return rouge_l_score(reference, prediction).fmeasure


def rouge_l_corpus(pairs: Iterable[tuple[str, str]]) -> float:
    """Mean Rouge-L F over (reference, prediction) pairs: each question weighs the same, however long."""
    scores = [rouge_l(ref, pred) for ref, pred in pairs]
    if not scores:
        raise UserError("rouge_l_corpus: no questions to score")
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------------------------------------------
# key recall, the answer alone


def normalize(text: str) -> str:
    """NFKC (full width -> ASCII), lower case, no whitespace at all."""
    return "".join(unicodedata.normalize("NFKC", text).split()).lower()


def key_recall(answer: str, key: str) -> bool:
    """Does the answer contain the question's key exactly, ignoring width, case and spaces?"""
    wanted = normalize(key)
    if not wanted:
        raise UserError(f"key_recall: empty key {key!r} (every answer would contain it)")
    return wanted in normalize(answer)


def cut_at_stops(text: str, stops: Iterable[str] = ()) -> str:
    """`text` up to the first occurrence of any stop string, stripped."""
    end = len(text)
    for stop in stops:
        if stop and stop in text:
            end = min(end, text.index(stop))
    return text[:end].strip()


def answer_only(prompt: str, full_text: str, stops: Iterable[str] = ()) -> str:
    """The continuation of `prompt` in `full_text` (prompt + generated text, as shared.inference.generate.generate returns
    it), cut at the first stop string (the EOS token's text, a next-question marker): never the prompt itself."""
    if not full_text.startswith(prompt):
        raise ValueError(f"generated text does not start with its prompt {prompt[:40]!r}")
    return cut_at_stops(full_text[len(prompt):], stops)


# ----------------------------------------------------------------------------------------------------------------
# QA evaluation


def field(item: dict, name: str) -> str:
    """A question record's field, as `name` or `Name` (qa.jsonl has Question/Answer, rag.jsonl question/answer)."""
    for key in (name, name.capitalize()):
        if isinstance(item.get(key), str):
            return item[key]
    raise UserError(f"question {item.get('id', '?')}: no '{name}' (or '{name.capitalize()}') text field")


def render_prompt(template: str, item: dict) -> str:
    """The template (str.format fields, e.g. "{question}[SEP]") filled from the item; `question` always works."""
    fields = {k: v for k, v in item.items() if isinstance(v, str)}
    fields["question"] = field(item, "question").strip()
    names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
    missing = [n for n in names if n not in fields]
    if missing:
        raise UserError(f"QA template {template!r}: field '{missing[0]}' is not in question {item.get('id', '?')} "
                        f"(it has {', '.join(sorted(fields))})")
    return template.format(**fields)


GREEDY_DROPS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "num_beams", "num_return_sequences")


def qa_eval(model, tokenizer, questions: Iterable[dict], template: str, preset: dict | None = None,
            stops: Sequence[str] = ()) -> dict:
    """Answer every question greedily (the preset's length settings; sampling switched off), stop at EOS or a stop
    string, and score the generated answer only. Writes nothing.

    Returns {"questions": n, "rouge_l": mean F over questions, "key_recall": share of keyed questions whose answer
    holds the key (None when no question has one), "rows": [{id, question, reference, answer, rouge_l, key, key_hit}]}.
    """
    from shared.inference.generate import generate

    preset = {k: v for k, v in (preset or {}).items() if k not in GREEDY_DROPS}
    preset.update(do_sample=False)
    preset.setdefault("max_new_tokens", 64)
    stops = [s for s in (tokenizer.eos_token, *stops) if s]
    rows = []
    for item in questions:
        prompt = render_prompt(template, item)
        answer = answer_only(prompt, generate(model, tokenizer, prompt, preset), stops)
        reference = field(item, "answer")
        key = item.get("key") or None
        rows.append({"id": item.get("id"), "question": field(item, "question"), "reference": reference,
                     "answer": answer, "rouge_l": rouge_l(reference, answer), "key": key,
                     "key_hit": key_recall(answer, key) if key else None})
    if not rows:
        raise UserError("qa_eval: no questions")
    keyed = [r["key_hit"] for r in rows if r["key_hit"] is not None]
    return {"questions": len(rows), "rouge_l": sum(r["rouge_l"] for r in rows) / len(rows),
            "key_recall": sum(keyed) / len(keyed) if keyed else None, "rows": rows}
