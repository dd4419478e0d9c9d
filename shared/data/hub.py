"""The one "Hub, else bundled, said loudly and recorded" path, for everything slm may fetch from the Hugging Face Hub:
datasets, tokenizers, model configs, embedding models, weights.

    obj, prov = hub.load_or_fallback("dataset", "Iess/chinese_modern_poetry", lambda: load_dataset(...),
                                     fallback="data/poems/poems.jsonl", load_fallback=lambda: load_local(...))

tries the Hub only when it is reachable (HF_HUB_OFFLINE unset and huggingface.co answers within 3 s), and
otherwise, or when loading fails, prints a banner naming what was replaced, by what and why, and returns the
fallback with a `Provenance` that the run log records. No fallback -> one UserError line saying why.
"""
from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from shared.config.errors import UserError

T = TypeVar("T")


@dataclass
class Provenance:
    """Where a thing came from: what the run log says about data, tokenizers, configs and embedding models."""
    source: str
    fallback: bool = False
    reason: str = ""
    fingerprint: str = ""
    records: int | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = self.source
        if self.records is not None:
            text += f" ({self.records} records" + (f", sha256 {self.fingerprint[:16]}" if self.fingerprint else "") + ")"
        if self.fallback:
            text += f" -- OFFLINE FALLBACK: {self.reason}"
        return text


def warn_loudly(message: str) -> None:
    bar = "!" * min(100, len(message) + 4)
    print(f"\n{bar}\n! {message}\n{bar}\n", flush=True)


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co can't be reached quickly (saves ~25 s of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_or_fallback(what: str, ref: str, load: Callable[[], T], *, fallback: str | None = None,
                     load_fallback: Callable[[], T] | None = None, fallback_key: str = "fallback"
                     ) -> tuple[T, Provenance]:
    """`load()` the Hub `ref` when the Hub is reachable; else (or when it fails) `load_fallback()`, said loudly."""
    reason = "the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1)"
    if hub_reachable():
        try:
            return load(), Provenance(source=f"hub:{ref}")
        except Exception as e:  # missing, gated, network cut mid-way
            reason = f"loading hub:{ref} failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    if load_fallback is None:
        raise UserError(f"{what}: cannot load '{ref}': {reason}, and the recipe has no {fallback_key}")
    warn_loudly(f"{what.upper()} FALLBACK: using {fallback} instead of hub:{ref}: {reason}")
    return load_fallback(), Provenance(source=str(fallback), fallback=True, reason=f"instead of hub:{ref}: {reason}")
