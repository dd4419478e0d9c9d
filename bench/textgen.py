"""Chinese text of any size for benchmarks: a character n-gram model of the bundled Chinese text, sampled fast.

Repeating the same 2 MB a thousand times would make a tokenizer benchmark lie: a trainer's memory grows with the
number of *distinct* words it sees, and a repeated file has few. So the model is estimated from the bundled text
(prose, the fictional world's encyclopedia, news and story, the Zhihu answers) and sampled, which gives new
sentences at every size with the source's character statistics.

The model is an order-`order` character n-gram with Witten-Bell back-off: in a context seen N times with T
different next characters, the next character is new with probability T / (N + T), and is then drawn from the
shorter context. That rate is estimated from the source itself, so the sample invents unseen character
combinations about as often as more text by the same writers would, instead of only re-stitching the source.

Sampling is vectorised over many independent chains (each chain is one generated document). The state of a chain
is a position in the source: the last characters it wrote match the source there, for the length `match` (1 to
order-1). A step draws the back-off, then a uniformly random *occurrence* of the chosen context in the source,
and moves to the position after it: two array gathers per step and no search, so 1B characters take minutes on
one core. Seeded: the same seed, size and settings give the same text.

    model = NgramModel.from_texts(bundled_chinese_texts(), order=4)
    for doc in model.generate(100_000_000, seed=0): ...      # exactly 100M characters, in 2,048-char documents
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from shared import REPO_ROOT
from shared.config.errors import UserError
from shared.data.text import record_text

BUNDLED = ("data/prose/prose.jsonl", "data/world/encyclopedia.jsonl", "data/world/news.jsonl",
           "data/world/story.txt", "data/zhihu/zhihu.jsonl")


def bundled_chinese_texts(root: Path = REPO_ROOT) -> Iterator[str]:
    """The bundled Chinese documents as plain texts (titles, summaries, sections, bodies, answers), without the
    news dates, as the committed benchmark figures were measured."""
    for name in BUNDLED:
        path = root / name
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
            continue
        for line in path.open(encoding="utf-8"):
            yield record_text(json.loads(line), date=False)


class NgramModel:
    def __init__(self, chars: np.ndarray, source: np.ndarray, order: int):
        self.chars, self.src, self.order = chars, source, order  # code points; the source as character ids
        L, V = len(source), len(chars)
        # Number the distinct contexts of each length k = 0..order-1 in one id space. For a context id c:
        # count[c] occurrences, listed at occurrence[start[c]:start[c] + count[c]] (the positions that follow it),
        # and backoff[c] = T / (N + T). ctx_after[k, p]: the k-character context that ends at position p.
        self.ctx_after = np.zeros((order, L), dtype=np.int64)
        counts, starts, backoffs, occurrences, base = [], [], [], [], 0
        for k in range(order):
            code = np.zeros(L, dtype=np.int64)
            for j in range(1, k + 1):  # the k characters before position q (the source is read as a ring)
                code = code * V + np.roll(source, j)
            ctx = np.unique(code, return_inverse=True)[1]
            count = np.bincount(ctx)
            distinct = np.bincount(np.unique(ctx * V + source) // V)  # different next characters per context
            counts.append(count)
            starts.append(k * L + np.cumsum(count) - count)
            backoffs.append(distinct / (count + distinct) if k else np.zeros(1))  # the unigram never backs off
            occurrences.append(np.argsort(ctx, kind="stable"))
            self.ctx_after[k] = base + np.roll(ctx, -1)
            base += len(count)
        self.count, self.start = np.concatenate(counts), np.concatenate(starts)
        self.backoff = np.concatenate(backoffs).astype(np.float32)
        self.occurrence = np.concatenate(occurrences)

    @classmethod
    def from_texts(cls, texts: Iterable[str], order: int = 4) -> "NgramModel":
        if not 1 <= order <= 6:
            raise UserError(f"textgen: order must be 1..6, got {order}")
        text = "\n\n".join(t for t in texts if t)
        if len(text) < 1000:
            raise UserError(f"textgen: the source has {len(text)} characters; need at least 1,000")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        chars, source = np.unique(codes, return_inverse=True)
        if float(len(chars)) ** (order - 1) * len(chars) >= 2**62:
            raise UserError(f"textgen: {len(chars)} distinct characters are too many for order {order}")
        return cls(chars, source.astype(np.int64), order)

    def generate(self, n_chars: int, seed: int = 0, doc_chars: int = 2048, chains: int = 4096) -> Iterator[str]:
        """Yield documents of `doc_chars` characters (the last one shorter) until exactly `n_chars` are out."""
        rng = np.random.default_rng(seed)
        top, L = self.order - 1, len(self.src)
        left = n_chars
        while left > 0:
            b = min(chains, -(-left // doc_chars))
            pos = rng.integers(0, L, size=b)  # start anywhere in the source: stationary from the first character
            match = np.full(b, top)
            out = np.empty((doc_chars, b), dtype=np.int32)
            for step in range(doc_chars):
                u = rng.random((top + 1, b), dtype=np.float32)
                k = match
                for level in range(top, 0, -1):  # back off while the context offers a new character
                    k = np.where((k == level) & (u[level] < self.backoff[self.ctx_after[level, pos]]), level - 1, k)
                ctx = self.ctx_after[k, pos]
                count = self.count[ctx]
                pos = self.occurrence[self.start[ctx] + np.minimum((u[0] * count).astype(np.int64), count - 1)]
                out[step] = pos
                match = np.minimum(k + 1, top)
            text = self.chars[self.src[out.T]].astype("<u4").tobytes().decode("utf-32-le")
            for i in range(b):
                doc = text[i * doc_chars:(i + 1) * doc_chars][:left]
                left -= len(doc)
                yield doc
                if left <= 0:
                    return


def write_jsonl(docs: Iterable[str], path: Path, source: str = "ngram") -> int:
    """Write documents as `{"text", "source"}` lines (the cleaning stage's format); returns the characters written."""
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc, "source": source}, ensure_ascii=False) + "\n")
            total += len(doc)
    return total
