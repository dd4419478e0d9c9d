"""MiniGLM news data (the document's JinYong news set; our 苇川 world stands in): news reports and encyclopedic
entries about the city, the novelist 林见秋 and her works -> cleaned documents -> token bins (minigl/prepare.py).

    python minigl/prepare_jynews.py [recipes/minigl/jynews.yaml] [key=value ...]   -> runs/minigl/jynews/final/

One document per record: a report is its title, date and body; an entry is its title, summary and each section
(its title, then its content).
"""
from __future__ import annotations

from pathlib import Path

import prepare  # minigl/prepare.py, the writer (this script's own folder is on the path)
from shared.data.sources import read_jsonl
from shared.config.errors import UserError, run_main


def read_jynews(path: Path):
    for n, r in enumerate(read_jsonl(path), start=1):
        if "body" in r:  # news: title, date, body
            parts = [r.get("title", ""), r.get("date", ""), r["body"]]
        elif "summary" in r or "sections" in r:  # encyclopedia: title, summary, sections [{title, content}]
            parts = [r.get("title", ""), r.get("summary", "")]
            parts += [f"{s.get('title', '')}\n{s.get('content', '')}" for s in r.get("sections") or []]
        else:
            raise UserError(f"{path}:{n}: neither a news report (body) nor an entry (summary/sections)")
        yield {"id": r.get("id", f"{path.stem}-{n}"), "text": "\n".join(p for p in parts if p)}


if __name__ == "__main__":
    run_main(lambda argv: prepare.main(argv, "recipes/minigl/jynews.yaml", "MiniGLM news + encyclopedia data",
                                       read_jynews))
