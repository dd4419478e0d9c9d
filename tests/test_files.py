"""The file helpers every writer and reader uses (shared/config/files.py) and the text helpers every preparation
stage shares (shared/data/text.py): atomic writes keep the old content when a write fails and leave no temporary
behind, paths show relative to the repository, folder walks are sorted and filtered, and a bundled 苇川 record
renders to the text the stages train on and retrieve from."""
from __future__ import annotations

import json
import os

import pytest
from conftest import REPO

from shared.config.files import atomic_folder, atomic_path, atomic_write, display_path, replace_folder, walk_files
from shared.data.text import collapse_blank_lines, drop_invisible, record_text, squeeze_spaces


def first_record(name: str) -> dict:
    with open(REPO / "data" / "world" / name, encoding="utf-8") as f:
        return json.loads(f.readline())


# ----------------------------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_writes_text_and_bytes(tmp_path):
    atomic_write(tmp_path / "a.json", "苇川\n")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.json").read_bytes() == "苇川\n".encode("utf-8")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]


def test_a_writer_that_fails_midway_leaves_the_old_content_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            assert tmp.parent == path.parent  # same folder: os.replace never crosses a file system
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("half of the new")
                f.flush()
                raise RuntimeError("killed mid-write")
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["meta.json"]


def test_atomic_write_failing_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "log.md"
    atomic_write(path, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["log.md"]


def test_a_block_that_writes_nothing_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "loss.png"
    with atomic_path(path):
        pass  # e.g. no points to plot
    assert not path.exists() and os.listdir(tmp_path) == []
    path.write_bytes(b"old")
    with atomic_path(path):
        pass
    assert path.read_bytes() == b"old"


def test_atomic_folder_swaps_in_whole_or_not_at_all(tmp_path):
    final = tmp_path / "final"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(os.listdir(final)) == ["a.txt"]
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash while filling it")
    assert sorted(os.listdir(final)) == ["a.txt"]  # the old folder, untouched
    with atomic_folder(final) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(os.listdir(final)) == ["c.txt"]  # replaced whole, nothing of the old one left
    assert os.listdir(tmp_path) == ["final"]  # no -tmp or -old folder behind


def test_replace_folder_puts_a_finished_folder_in_place(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x").write_text("new")
    replace_folder(tmp_path / "new", tmp_path / "final")  # no old one yet
    assert (tmp_path / "final" / "x").read_text() == "new" and os.listdir(tmp_path) == ["final"]


# ----------------------------------------------------------------------------------------------------------------
# paths


def test_display_path_is_repository_relative_inside_and_unchanged_outside(tmp_path):
    assert display_path(REPO / "data" / "world" / "news.jsonl") == "data/world/news.jsonl"
    assert display_path(REPO / "runs" / ".." / "recipes") == "recipes"
    assert display_path(str(REPO / "bench")) == "bench"
    assert display_path(tmp_path / "x.jsonl") == str(tmp_path / "x.jsonl")


def test_walk_files_is_sorted_recursive_and_filtered_by_suffix(tmp_path):
    for name in ["b.txt", "a.jsonl", "sub/z.md", "sub/a.txt", "notes.csv", ".hidden.txt", "README"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "folder.txt").mkdir()  # a folder, whatever its name, is not a file
    found = [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path, (".txt", ".md", ".jsonl"))]
    assert found == [".hidden.txt", "a.jsonl", "b.txt", "sub/a.txt", "sub/z.md"]
    assert walk_files(tmp_path, (".parquet",)) == []


# ----------------------------------------------------------------------------------------------------------------
# text


def test_an_encyclopedia_entry_renders_title_summary_then_each_section():
    r = first_record("encyclopedia.jsonl")
    assert r["id"] == "enc-001" and "date" not in r
    sections = [x for s in r["sections"] for x in (s["title"], s["content"])]
    text = record_text(r)
    assert text == "\n".join([r["title"], r["summary"], *sections])
    assert text.startswith("苇川市\n苇川市是中国南方的一座河港城市") and "\n地理与气候\n" in text
    blocks = record_text(r, sep="\n\n").split("\n\n")  # retrieval's documents: one block per part
    assert blocks == [r["title"], r["summary"], *(f"{s['title']}\n{s['content']}" for s in r["sections"])]


def test_a_news_report_renders_title_date_then_body():
    r = first_record("news.jsonl")
    assert r["id"] == "news-001"
    assert record_text(r) == f"望河门城墙列为市级文物保护单位 明年春季启动修缮\n1995-11-20\n{r['body']}"
    assert record_text(r, sep="\n\n") == f"{r['title']}\n1995-11-20\n\n{r['body']}"
    assert record_text(r, date=False) == f"{r['title']}\n{r['body']}"


def test_a_record_without_some_parts_renders_what_it_has():
    assert record_text({"title": "问题", "content": " 回答 ", "votes": 3}) == "问题\n回答"  # a Zhihu answer
    assert record_text({"text": "一篇文章"}) == "一篇文章"
    assert record_text({"title": "词条", "sections": [{"title": "", "content": "内容"}, "not a section"]}) == "词条\n内容"


def test_the_shared_cleaning_rules():
    assert drop_invisible("a\u200bb\r\nc\u2028d\x00\re") == "ab\nc\nd\ne"
    assert squeeze_spaces(" \u3000a\t\t b\u00a0 c  ") == "a b c"
    assert collapse_blank_lines("a\n\n\n\nb\n\nc") == "a\n\nb\n\nc"
