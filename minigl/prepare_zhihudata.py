"""MiniGLM Zhihu data: question/answer dumps (title = the question, content = the answer) -> one document each,
question then answer -> cleaned documents -> token bins (minigl/prepare.py).

    python minigl/prepare_zhihudata.py [recipes/minigl/zhihu.yaml] [key=value ...]   -> runs/minigl/zhihu/final/
"""
from __future__ import annotations

from pathlib import Path

import prepare  # minigl/prepare.py, the writer (this script's own folder is on the path)
from shared.data.sources import read_jsonl
from shared.data.text import record_text
from shared.config.errors import UserError, run_main


def read_zhihu(path: Path):
    for n, r in enumerate(read_jsonl(path), start=1):
        if not isinstance(r.get("title"), str) or not isinstance(r.get("content"), str):
            raise UserError(f"{path}:{n}: a Zhihu record needs title (the question) and content (the answer)")
        yield {"id": r.get("id", f"{path.stem}-{n}"), "text": record_text(r)}


if __name__ == "__main__":
    run_main(lambda argv: prepare.main(argv, "recipes/minigl/zhihu.yaml", "MiniGLM Zhihu data", read_zhihu))
