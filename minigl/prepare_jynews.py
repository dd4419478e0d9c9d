"""MiniGLM news data (the document's JinYong news set; our 苇川 world stands in): news reports and encyclopedic
entries about the city, the novelist 林见秋 and her works -> cleaned documents -> token bins (minigl/prepare.py).

    python minigl/prepare_jynews.py [recipes/minigl/jynews.yaml] [key=value ...]   -> runs/minigl/jynews/final/

One document per record (shared.data.text.record_text): a report is its title, date and body; an entry is its
title, summary and each section (its title, then its content).
"""
from __future__ import annotations

from pathlib import Path

import prepare  # minigl/prepare.py, the writer (this script's own folder is on the path)
from shared.data.sources import read_jsonl
from shared.data.text import record_text
from shared.config.errors import UserError, run_main


def read_jynews(path: Path):
    for n, r in enumerate(read_jsonl(path), start=1):
        if "body" not in r and "summary" not in r and "sections" not in r:
            raise UserError(f"{path}:{n}: neither a news report (body) nor an entry (summary/sections)")
        yield {"id": r.get("id", f"{path.stem}-{n}"), "text": record_text(r)}


if __name__ == "__main__":
    run_main(lambda argv: prepare.main(argv, "recipes/minigl/jynews.yaml", "MiniGLM news + encyclopedia data",
                                       read_jynews))
