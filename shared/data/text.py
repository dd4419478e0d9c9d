"""Text: a bundled record (data/world's encyclopedia entries and news reports, Zhihu answers, essays) rendered as one
document, and the cleaning rules every preparation stage shares (line breaks, invisible characters, spaces, blank
lines). What is special to one stage stays in its script: train_phi2/clean.py's headings, width and full stops,
minigl/prepare.py's chapters."""
from __future__ import annotations

import re

TEXT_FIELDS = ("summary", "body", "content", "text")  # entry: summary + sections; news: body; Zhihu: content; essay: text

LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")  # what str.splitlines() splits on
INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
SPACES = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
BLANK_LINES = re.compile(r"\n{3,}")


def record_text(record: dict, sep: str = "\n", date: bool = True) -> str:
    """A record as one document: title (and date), its text fields, then each section's title and content, with
    `sep` between the parts (retrieval separates them by a blank line, so a chunk ends at one)."""
    head = "\n".join(str(record[k]) for k in ("title", "date")[:1 + date] if record.get(k))
    parts = [head] + [str(record[k]) for k in TEXT_FIELDS if record.get(k)]
    for section in record.get("sections") or []:
        if isinstance(section, dict):
            parts.append("\n".join(str(section[k]) for k in ("title", "content") if section.get(k)))
    return sep.join(p.strip() for p in parts if p.strip())


def drop_invisible(text: str) -> str:
    """Every kind of line break (\\r\\n, \\r, U+2028...) -> \\n; zero-width and control characters dropped."""
    return INVISIBLE.sub("", LINE_BREAKS.sub("\n", text))


def squeeze_spaces(line: str) -> str:
    """One line with each run of spaces (tabs, NBSP, U+3000 too) made one space, and its ends stripped."""
    return SPACES.sub(" ", line).strip()


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row."""
    return BLANK_LINES.sub("\n\n", text)
