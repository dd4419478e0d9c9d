"""The bench's bookkeeping on tiny inputs (never speed): useful-token counts of padded / grouped / packed batches,
paired ratios, and the router-health flag on the reference log's expert-load table."""
import torch

from bench.suite import (REFERENCE_EXPERT_SHARES, interleaved, median_ratio, packed_batches, padded_batches,
                          useful_tokens)
from shared.models.moe import expert_load_markdown, router_health

DOCS = [[1] * 3, [2] * 10, [3] * 5, [4] * 7]  # 25 tokens in four documents


def test_pad_to_max_counts_only_real_tokens():
    batches = padded_batches(DOCS, batch=2, max_len=8, pad_id=0, grouped=False)
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (2, 8)]
    # truncated to 8: 3 + 8 + 5 + 7 = 23 useful tokens out of 32 positions
    assert sum(useful_tokens(b) for b in batches) == 23
    assert all(((b["labels"] == -100) == (b["attention_mask"] == 0)).all() for b in batches)


def test_length_grouped_pads_to_each_batch_max():
    batches = padded_batches(DOCS, batch=2, max_len=8, pad_id=0, grouped=True)
    assert [b["input_ids"].shape[1] for b in batches] == [8, 5]  # sorted: (8, 7) then (5, 3)
    assert sum(useful_tokens(b) for b in batches) == 23
    assert sum(b["input_ids"].numel() for b in batches) == 26  # 3 pad positions instead of 9


def test_packed_batches_are_all_useful():
    blocks = [[5] * 4 for _ in range(5)]
    batches = packed_batches(blocks, batch=2)
    assert len(batches) == 2  # the incomplete last batch is dropped
    assert all(useful_tokens(b) == b["input_ids"].numel() == 8 for b in batches)
    assert torch.equal(batches[0]["labels"], batches[0]["input_ids"])


def test_interleaved_runs_in_turn_and_ratio_is_paired():
    order = []
    interleaved({"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 2.0}, reps=2)
    assert order == ["a", "b", "a", "b"]
    assert median_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_router_flag_on_the_reference_table():
    flags = [router_health(torch.tensor(s), top_k=2) for s in REFERENCE_EXPERT_SHARES]
    assert round(flags[1]["top_k_share"], 1) == 87.6  # two experts take ~87% of layer 1's choices
    assert flags[1]["flag"].startswith("collapsed?")
    assert flags[3]["max_min"] > 100 and flags[3]["flag"].startswith("collapsed?")  # ~870 in the log (0.1% rounding)
    assert flags[0]["flag"] == "skewed" and flags[2]["flag"] == "skewed"


def test_router_flag_thresholds():
    even = torch.full((8,), 100.0)
    assert router_health(even)["flag"] == ""
    assert round(router_health(even)["top_k_share"], 1) == 25.0
    dead = even.clone()
    dead[0] = 0
    assert router_health(dead)["flag"].startswith("collapsed?")
    # top-2 at 74% with every expert alive and max/min <= 10: skewed, not collapsed; at 76%: collapsed
    assert router_health(torch.tensor([37.0, 37, 4.5, 4.5, 4.5, 4.5, 4, 4]))["flag"] == "skewed"
    assert router_health(torch.tensor([38.0, 38, 4, 4, 4, 4, 4, 4]))["flag"].startswith("collapsed?")


def test_expert_load_markdown_flags_collapse():
    counts = torch.tensor([[100] * 8, [1, 24, 427, 449, 29, 48, 16, 6]])
    table = expert_load_markdown(counts, top_k=2)
    rows = [line for line in table.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert "collapsed?" not in rows[0] and "skewed" not in rows[0]
    assert "collapsed?" in rows[1]


def test_expert_table_reads_the_run_logs_shares(tmp_path):
    from bench.suite import expert_table

    log = tmp_path / "train_log.md"
    log.write_text("# x\n\n## Expert load after training (validation tokens)\n\nShare of routed tokens.\n\n"
                   "| layer | e0 | e1 | e2 | e3 | top-2 | max/min | |\n|---|---|---|---|---|---|---|---|\n"
                   "| 0 | 40.0 | 10.0 | 25.0 | 25.0 | 65.0 | 4.0 | skewed |\n"
                   "| 1 | 0.1 | 49.9 | 50.0 | 0.0 | 99.9 | inf | collapsed? |\n\n## Samples\n\n| 3 | 1 | 2 |\n",
                   encoding="utf-8")
    assert expert_table(log) == [[40.0, 10.0, 25.0, 25.0], [0.1, 49.9, 50.0, 0.0]]
