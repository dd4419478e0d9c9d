"""Token bins: exact round trip, dtype choice, meta.json, seeded windows that survive pickling and a resumed Trainer."""
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset

from shared.data import bins
from shared.config.errors import UserError
from shared.config.recipe import TokenizerArgs
from shared.data.tokenizer import load_tokenizer

DOCS = ["The sky is blue because air scatters short wavelengths.", "春天来了，柳枝在风里说话。",
        "Line one\nline two\n\n  indented, trailing space ", "🐟 emoji and <b>markup</b>", "x"] * 7
SPLITS = {"train": Dataset.from_dict({"text": DOCS[:30]}), "val": Dataset.from_dict({"text": DOCS[30:]})}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(TokenizerArgs(vocab_size=400), SPLITS["train"], "bins-test", tmp_path_factory.mktemp("tk"))[0]


@pytest.fixture(scope="module")
def built(tok, tmp_path_factory):
    """Bins written by 2 worker processes in chunks of 4 documents (so order across chunks is exercised)."""
    out = tmp_path_factory.mktemp("bins")
    chunk, bins.CHUNK = bins.CHUNK, 4
    try:
        meta = bins.write_bins(out, SPLITS, tok, num_proc=2, tokenizer_source="test BPE",
                               sources=[{"source": "DOCS", "sha256": "abc"}], extra={"seed": 3})
    finally:
        bins.CHUNK = chunk
    return out, meta


def test_bins_decode_to_the_documents_joined_with_eos(built, tok):
    out, _ = built
    for name, ds in SPLITS.items():
        ids = bins.read_bin(out / f"{name}.bin")
        assert ids.dtype == np.uint16
        assert tok.decode(ids.tolist()) == "".join(t + tok.eos_token for t in ds["text"])
        assert ids[-1] == tok.eos_token_id and (ids == tok.eos_token_id).sum() == len(ds)


def test_meta_json(built, tok):
    out, meta = built
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok) and meta["eos_token_id"] == tok.eos_token_id
    assert meta["tokenizer"]["source"] == "test BPE" and meta["sources"] == [{"source": "DOCS", "sha256": "abc"}]
    assert meta["seed"] == 3
    for name, ds in SPLITS.items():
        s = meta["splits"][name]
        data = (out / s["file"]).read_bytes()
        assert s["documents"] == len(ds) and s["tokens"] * 2 == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list(out.glob(".*"))  # no temporary files left behind


class WideTokenizer:
    """A tokenizer with 70,000 entries whose ids go past 65,535: the bins must switch to uint32."""
    eos_token_id, name_or_path = 69_999, "wide"

    def __len__(self):
        return 70_000

    def get_vocab(self):
        return {"<eos>": 69_999}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[65_000 + ord(c) for c in t] for t in texts]}


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tmp_path):
    assert bins.dtype_for(65_536) == np.uint16 and bins.dtype_for(65_537) == np.uint32
    meta = bins.write_bins(tmp_path, {"train": Dataset.from_dict({"text": ["ab", "c"]})}, WideTokenizer(), num_proc=1)
    ids = bins.read_bin(tmp_path / "train.bin")
    assert meta["dtype"] == "uint32" and ids.dtype == np.uint32
    assert ids.tolist() == [65_097, 65_098, 69_999, 65_099, 69_999]


def test_windows_depend_only_on_seed_and_index(built):
    path = built[0] / "train.bin"
    a, b = bins.BinWindows(path, 16, num_windows=50, seed=5), bins.BinWindows(path, 16, num_windows=50, seed=5)
    a[0]  # opens a's memmap: pickling must still not copy the file
    copy = pickle.loads(pickle.dumps(a))
    assert len(pickle.dumps(a)) < 2000
    for i in (0, 7, 49):
        w = a.window(i)
        assert len(w) == 17 and np.array_equal(w, b.window(i)) and np.array_equal(w, copy.window(i))
        item = a[i]
        assert torch.equal(item["input_ids"], torch.from_numpy(w[:-1]))
        assert torch.equal(item["labels"], item["input_ids"])
        assert torch.equal(item["shift_labels"], torch.from_numpy(w[1:]))
    # a reader that starts at window k (a resumed run) reads what the uninterrupted one read from k on
    assert all(np.array_equal(a.window(k), bins.BinWindows(path, 16, 50, seed=5).window(k)) for k in range(20, 50))
    assert not all(np.array_equal(a.window(i), bins.BinWindows(path, 16, 50, seed=6).window(i)) for i in range(5))
    with pytest.raises(IndexError):
        a[50]
    loader = torch.utils.data.DataLoader(a, batch_size=10, num_workers=2)  # workers open their own memmaps
    assert torch.equal(torch.cat([batch["input_ids"] for batch in loader]),
                       torch.stack([a[i]["input_ids"] for i in range(50)]))


def test_tiled_evaluation_windows_are_fixed_and_disjoint(built):
    path = built[0] / "val.bin"
    n = len(bins.read_bin(path))
    every = bins.BinWindows(path, 8, tiled=True)
    assert len(every) == (n - 1) // 8 and [every.start(i) for i in range(3)] == [0, 8, 16]
    few = bins.BinWindows(path, 8, num_windows=3, tiled=True)
    starts = [few.start(i) for i in range(3)]
    assert starts == sorted(set(starts)) and all(s % 8 == 0 and s + 9 <= n for s in starts)
    assert starts == [bins.BinWindows(path, 8, num_windows=3, tiled=True, seed=99).start(i) for i in range(3)]


def test_truncated_or_missing_bins_are_one_line_user_errors(built, tmp_path):
    out, _ = built
    for name in ("train.bin", "val.bin", "meta.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    data = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(data[:-2])
    with pytest.raises(UserError, match="truncated") as e:
        bins.BinWindows(tmp_path / "train.bin", 8)
    assert "\n" not in str(e.value) and "train.bin" in str(e.value)
    (tmp_path / "train.bin").unlink()
    with pytest.raises(UserError, match="train.bin: missing"):
        bins.read_bin(tmp_path / "train.bin")
    with pytest.raises(UserError, match="too few"):
        bins.BinWindows(tmp_path / "val.bin", 10_000)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(UserError, match="meta.json: missing"):
        bins.read_bin(tmp_path / "val.bin")


# ------------------------------------------------------------------------------------------------------------------
# a real (tiny) transformers Trainer, stopped and resumed from a checkpoint


def _trainer(out, windows, max_steps, remove_unused_columns=False):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    model.seen = []  # (sha of each training batch's input_ids, whether shift_labels reached the model)

    def record(module, args, kwargs):
        if module.training:
            digest = hashlib.sha256(kwargs["input_ids"].numpy().tobytes()).hexdigest()[:12]
            module.seen.append((digest, "shift_labels" in kwargs))

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2, save_steps=2,
                             save_strategy="steps", logging_steps=1, report_to="none", use_cpu=True, seed=7,
                             disable_tqdm=True, remove_unused_columns=remove_unused_columns)
    return Trainer(model=model, args=args, train_dataset=windows)


def _train(out, windows, max_steps, resume=None):
    trainer = _trainer(out, windows, max_steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer, 16-wide model: extra threads only wait on each other on a busy CPU
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        torch.set_num_threads(threads)
    return trainer.model.seen


def test_a_resumed_trainer_reads_the_windows_an_uninterrupted_one_reads(built, tmp_path):
    windows = bins.BinWindows(built[0] / "train.bin", 16, num_windows=6, seed=11)  # 3 steps per epoch: crosses one
    full = _train(tmp_path / "full", windows, max_steps=5)
    first = _train(tmp_path / "split", windows, max_steps=2)  # "killed" after the checkpoint at step 2
    rest = _train(tmp_path / "split", pickle.loads(pickle.dumps(windows)), max_steps=5,
                  resume=str(tmp_path / "split" / "checkpoint-2"))
    assert len(full) == 5 and first + rest == full
    assert all(shifted for _, shifted in full)  # all block_size targets trained (remove_unused_columns=False)
    # the Trainer's default remove_unused_columns=True drops shift_labels (not a named forward argument of GPT-2),
    # and the model then shifts `labels` itself
    batch = next(iter(_trainer(tmp_path / "default", windows, 1, remove_unused_columns=True).get_train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}


def test_shift_labels_train_every_position_of_the_window(built):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    batch = torch.utils.data.default_collate([bins.BinWindows(built[0] / "train.bin", 16, 4)[i] for i in range(4)])
    out = model(**batch)
    targets = torch.cat([batch["input_ids"][:, 1:], batch["shift_labels"][:, -1:]], dim=1)
    assert torch.equal(targets, batch["shift_labels"])  # shift_labels is the window moved by one
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 400), batch["shift_labels"].reshape(-1))
    assert torch.allclose(out.loss, expected)  # 16 targets per window, not 15
    fallback = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # shift_labels dropped: 15, still right
    assert torch.allclose(fallback, torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 400), batch["shift_labels"][:, :-1].reshape(-1)))


def test_a_separator_replaces_eos_between_documents(tok, tmp_path):
    splits = {"train": Dataset.from_dict({"text": ["ab", "cd"]})}
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    meta = bins.write_bins(tmp_path / "blank", splits, tok, num_proc=1, separator=sep)
    assert tok.decode(bins.read_bin(tmp_path / "blank" / "train.bin").tolist()) == "ab\n\ncd\n\n"
    assert meta["separator"] == sep and meta["eos_token_id"] == tok.eos_token_id
    bins.write_bins(tmp_path / "none", splits, tok, num_proc=1, separator=[])  # back to back: nanoGPT's one text
    assert tok.decode(bins.read_bin(tmp_path / "none" / "train.bin").tolist()) == "abcd"


def test_batched_reads_give_the_same_windows_and_stack_without_padding(built):
    w = bins.BinWindows(built[0] / "train.bin", 16, num_windows=40, seed=5)
    picks = [3, 39, 0, 3, 17]
    one_by_one = bins.stack_windows([w[i] for i in picks])
    batched = bins.stack_windows(w.__getitems__(picks))  # what the DataLoader calls
    assert one_by_one.keys() == batched.keys() == {"input_ids", "labels", "shift_labels"}
    assert all(torch.equal(one_by_one[k], batched[k]) and batched[k].shape == (5, 16) for k in batched)
    loader = torch.utils.data.DataLoader(w, batch_size=8, collate_fn=bins.stack_windows)
    assert torch.equal(torch.cat([b["shift_labels"] for b in loader]), torch.stack([w[i]["shift_labels"] for i in range(40)]))
    with pytest.raises(IndexError):
        w.__getitems__([1, 40])
