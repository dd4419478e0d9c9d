"""The chat REPL: the turn format from the recipe, multi-turn prompts that fit the context, stop markers, streaming,
and a clean exit on Ctrl-D / Ctrl-C, driven through a pipe and through a pseudo-terminal.

The model is a 2-layer GPT-2 that has memorised two exchanges in the nanoGPT chat format (trained here in a few
seconds), so with greedy decoding its answers are known: "Hello" -> "Hi! I am fine.", "How are you?" -> "Good, thanks."
"""
from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import PY, REPO
from shared.inference import chat
from shared.config.errors import UserError

NANOGPT = {"user": "<user>{text}<end>\n", "assistant": "<assistant>", "end": "<end>", "separator": "\n"}
HELLO = "<user>Hello<end>\n<assistant>Hi! I am fine.<end>\n"
HOW = "<user>How are you?<end>\n<assistant>Good, thanks.<end>\n"
TEXTS = [HELLO, HOW, HELLO + HOW, HOW + HELLO]


def make_run(root: Path, model: str = "tiny", run_name: str = "chat", chat_format: dict | None = NANOGPT,
             positions: int = 2048, texts: list[str] = TEXTS,
             specials: tuple[str, ...] = ("<user>", "<assistant>", "<end>"), width: int = 64, layers: int = 2,
             steps: int = 120) -> Path:
    """runs/<model>/<run>/final: a GPT-2 trained to recite `texts` (steps=0: random weights), its tokenizer (chat
    markers as special tokens) and a recipe.yaml with the generation preset. Cached per root: the modules share one
    (pytest's basetemp)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared.data.tokenizer import train_bpe, with_specials

    final = root / model / run_name / "final"
    if (final / "config.json").is_file():
        return final
    tok = train_bpe(iter([texts * 4]), 400, 1, root / model / run_name / ".tok")
    tok = with_specials(tok, SimpleNamespace(special_tokens=list(specials)))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=width, n_layer=layers, n_head=4,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model_ = GPT2LMHeadModel(config)
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model_.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: one thread is the fastest
    try:
        for _ in range(steps):
            loss = model_(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert not steps or loss.item() < 0.1, loss.item()  # ~0.035: only each text's first message is unpredictable
    model_.save_pretrained(final)
    tok.save_pretrained(final)
    generation = {"do_sample": False, "max_new_tokens": 24}
    if chat_format:
        generation["chat_format"] = chat_format
    (final / "recipe.yaml").write_text(yaml.safe_dump({"generation": generation}), encoding="utf-8")
    return final


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "chat-runs"
    make_run(root)
    return root


@pytest.fixture(scope="module")
def loaded(root):
    from shared.config.runs import find_run
    from shared.inference.generate import load

    return load(find_run("tiny", None, root))


# ----------------------------------------------------------------------------------------------------------------
# the format, the prompt builder, the stop markers (no model)


def test_turns_render_in_the_recipes_format():
    fmt = chat.ChatFormat.from_preset({"chat_format": NANOGPT})
    assert fmt.render([], "Hello, how are you?") == "<user>Hello, how are you?<end>\n<assistant>"
    assert fmt.render([("Hello", "Hi!")], "How are you?") == \
        "<user>Hello<end>\n<assistant>Hi!<end>\n<user>How are you?<end>\n<assistant>"
    assert fmt.stops() == ["<end>", "<user>"]
    phi2 = chat.ChatFormat.from_preset({"chat_format": {"user": "##提问:\n{text}\n", "assistant": "##回答:\n",
                                                        "end": "[EOS]", "system": "[BOS]"}})
    assert phi2.render([("你好", "你好！")], "{x}?") == "[BOS]##提问:\n你好\n##回答:\n你好！[EOS]##提问:\n{x}?\n##回答:\n"
    assert phi2.stops() == ["[EOS]", "##提问:\n"]
    sft = chat.ChatFormat.from_preset({"chat_format": {"user": "##提问:\n{text}\n\n##回答:\n", "end": "[EOS]",
                                                       "assistant": ""}})  # the answer's opening inside `user`
    assert sft.render([("a", "b")], "c") == "##提问:\na\n\n##回答:\nb[EOS]##提问:\nc\n\n##回答:\n"


@pytest.mark.parametrize("spec, message", [
    (None, "not a chat model"),
    ("<user>{text}", "must be a mapping"),
    ({"user": "<user>{text}", "asistant": "<a>", "end": "<end>"}, "did you mean 'assistant'"),
    ({"user": "<user>", "assistant": "<a>", "end": "<end>"}, "{text} exactly once"),
    ({"user": "{text}", "assistant": "<a>"}, "chat_format.end is required"),
    ({"user": "{text}", "assistant": "<a>", "end": 3}, "must be a string"),
])
def test_a_bad_chat_format_is_one_line_naming_the_key(spec, message):
    with pytest.raises(UserError, match=message) as e:
        chat.ChatFormat.from_preset({"chat_format": spec} if spec is not None else {}, "recipe.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("recipe.yaml: ")


def test_the_oldest_turns_are_dropped_whole_when_the_context_overflows():
    fmt = chat.ChatFormat(user="U:{text}\n", assistant="A:", end="|", separator="\n")
    history = [("one", "1111"), ("two", "2222"), ("three", "3333")]
    full = fmt.render(history, "four")
    assert chat.fit_history(fmt, history, "four", len, len(full)) == (full, 0)
    prompt, dropped = chat.fit_history(fmt, history, "four", len, len(full) - 1)
    assert dropped == 1 and prompt == fmt.render(history[1:], "four") and prompt.startswith("U:two\n")
    prompt, dropped = chat.fit_history(fmt, history, "four", len, len("U:four\nA:"))
    assert dropped == 3 and prompt == "U:four\nA:"
    with pytest.raises(UserError, match="the message alone is 9 tokens and the prompt may have 8"):
        chat.fit_history(fmt, history, "four", len, 8)


def test_stream_text_is_cut_at_a_marker_and_never_shows_half_of_one():
    stops = ["<end>", "Question:"]
    assert chat.cut_at_stops("Hi there", stops) == ("Hi there", False)
    assert chat.cut_at_stops("Hi there<e", stops) == ("Hi there", False)  # "<e" may become "<end>"
    assert chat.cut_at_stops("Hi there<b", stops) == ("Hi there<b", False)
    assert chat.cut_at_stops("Hi. Ques", stops) == ("Hi. ", False)
    assert chat.cut_at_stops("Hi. Question: and more<end>", stops) == ("Hi. ", True)


def test_temperature_zero_is_greedy_and_drops_the_sampling_knobs():
    assert chat.decoding({"do_sample": True, "temperature": 0, "top_k": 5, "max_new_tokens": 3}) == \
        {"do_sample": False, "max_new_tokens": 3}
    assert chat.decoding({"do_sample": True, "temperature": 0.7}) == {"do_sample": True, "temperature": 0.7}


# ----------------------------------------------------------------------------------------------------------------
# with the tiny model, in-process


def test_the_second_turn_sees_the_first_and_the_answers_stop_at_the_end_marker(loaded):
    model, tok, recipe = loaded
    c = chat.Chat(model, tok, recipe["generation"])
    first = list(c.reply("Hello"))
    assert first[-1] == "Hi! I am fine."  # stopped at <end> (max_new_tokens is 24)
    assert all(first[-1].startswith(a) for a in first) and len(first) > 1  # streamed: a growing text
    assert c.prompt("How are you?") == HELLO + "<user>How are you?<end>\n<assistant>"
    assert list(c.reply("How are you?"))[-1] == "Good, thanks."
    assert c.history == [("Hello", "Hi! I am fine."), ("How are you?", "Good, thanks.")]
    c.budget = lambda: c.count(HOW + "<user>Hello<end>\n<assistant>")  # a small context: room for one turn
    assert c.prompt("Hello") == HOW + "<user>Hello<end>\n<assistant>" and c.dropped == 1
    assert list(c.reply("Hello"))[-1] == "Hi! I am fine."
    c.reset()
    assert c.prompt("Hello") == "<user>Hello<end>\n<assistant>"


def test_a_multi_token_end_marker_stops_by_stop_string_and_is_never_shown(loaded):
    model, tok, recipe = loaded
    fmt = chat.ChatFormat(user="<user>{text}<end>\n", assistant="<assistant>", end=" I am")
    assert len(tok.encode(" I am", add_special_tokens=False)) > 1
    answers = list(chat.Chat(model, tok, recipe["generation"], fmt).reply("Hello"))
    assert answers[-1] == "Hi!" and all(a in ("H", "Hi", "Hi!") for a in answers)


def test_a_ctrl_c_while_the_generation_thread_starts_still_cancels_it(loaded, monkeypatch):
    # CI once exited with SIGABRT after Ctrl-C then Ctrl-D: the Ctrl-C had landed as the thread started, before the
    # code that cancels it, and the uncancelled daemon was still generating when the interpreter shut down
    model, tok, recipe = loaded
    started: list = []

    class CtrlCAtStart(chat.threading.Thread):
        def start(self):
            super().start()
            started.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(chat.threading, "Thread", CtrlCAtStart)
    steps = []
    hook = model.register_forward_hook(lambda *_: steps.append(1))
    try:
        with pytest.raises(KeyboardInterrupt):
            next(chat.stream(model, tok, "<user>Hello<end>\n<assistant>",
                             {**recipe["generation"], "min_new_tokens": 1500, "max_new_tokens": 1500}))
        thread, = started
        thread.join(timeout=120)
    finally:
        hook.remove()
    assert not thread.is_alive() and not thread.daemon  # a daemon would not hold the interpreter's exit for it
    assert len(steps) < 200  # cancelled: a handful of tokens, not the 1,500 asked for


def test_one_shot_prints_the_answer_and_a_bad_key_or_plain_model_is_one_line(root, capsys, tmp_path):
    chat.main(["--root", str(root), "--prompt", "Hello", "--prompt", "How are you?"], "tiny")
    assert capsys.readouterr().out == "Hi! I am fine.\nGood, thanks.\n"
    with pytest.raises(UserError, match="unknown generation key 'temprature'.*did you mean 'temperature'"):
        chat.main(["--root", str(root), "temprature=0.5"], "tiny")
    with pytest.raises(UserError, match="num_beams=2: answers are streamed"):
        chat.main(["--root", str(root), "num_beams=2"], "tiny")
    bare = tmp_path / "runs" / "tiny" / "bare" / "final"  # the same model, its recipe without a chat_format
    bare.mkdir(parents=True)
    for f in (root / "tiny" / "chat" / "final").iterdir():
        if f.name != "recipe.yaml":
            (bare / f.name).symlink_to(f)
    with pytest.raises(UserError, match="not a chat model"):
        chat.main(["--root", str(tmp_path / "runs"), "--run", "bare", "--prompt", "Hello"], "tiny")


# ----------------------------------------------------------------------------------------------------------------
# the REPL as a program: through a pipe, and through a pseudo-terminal


def test_the_repl_reads_a_pipe_line_by_line_keeps_context_resets_and_exits_0_at_eof(root):
    import subprocess

    proc = subprocess.run([PY, "-m", "shared.inference.chat", "tiny", "--root", str(root), "--show-prompt"], cwd=REPO,
                          input="Hello\nHow are you?\n/reset\nHow are you?\n", capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    transcript = [line for line in proc.stdout.splitlines() if line.startswith(("you> ", "tiny> "))]
    assert transcript == ["you> Hello", "tiny> Hi! I am fine.", "you> How are you?", "tiny> Good, thanks.",
                          "you> /reset", "you> How are you?", "tiny> Good, thanks."]
    prompts = [line.removeprefix("[prompt] ") for line in proc.stderr.splitlines() if line.startswith("[prompt] ")]
    assert prompts == [repr("<user>Hello<end>\n<assistant>"),
                       repr(HELLO + "<user>How are you?<end>\n<assistant>"),
                       repr("<user>How are you?<end>\n<assistant>")]
    assert "Traceback" not in proc.stderr


def spawn(args: list[str]) -> tuple[int, int]:
    """`python -m shared.inference.chat ...` on a new pseudo-terminal (its controlling terminal: Ctrl-C becomes SIGINT)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: never returns
        try:
            os.chdir(REPO)
            os.execve(PY, [PY, "-m", "shared.inference.chat", *args], {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"})
        finally:
            os._exit(127)
    return pid, fd


def read_until(fd: int, text: str, seen: list[str], timeout: float = 90) -> str:
    """Read the terminal until `text` appears after what was already seen; returns everything read so far."""
    start, deadline = len("".join(seen)), time.monotonic() + timeout
    while text not in "".join(seen)[start:]:
        if time.monotonic() > deadline or not select.select([fd], [], [], deadline - time.monotonic())[0]:
            raise AssertionError(f"no {text!r} on the terminal after {timeout}s:\n{''.join(seen)[-2000:]}")
        try:
            seen.append(os.read(fd, 4096).decode("utf-8", "replace"))
        except OSError:  # the child closed the terminal
            raise AssertionError(f"the chat exited before {text!r}:\n{''.join(seen)[-2000:]}") from None
    return "".join(seen)


def finish(pid: int, fd: int, seen: list[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen.append(os.read(fd, 4096).decode("utf-8", "replace"))
            except OSError:
                pass
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the chat did not exit:\n" + "".join(seen)[-2000:])
    os.close(fd)
    return os.waitstatus_to_exitcode(status)


def test_on_a_terminal_the_answer_streams_ctrl_c_stops_it_and_ctrl_d_exits_0(root):
    # an untrained model 6 layers deep: 1,900 tokens take it many seconds, so Ctrl-C surely comes mid-answer (the
    # 2-layer one could finish its whole answer before the keystroke arrived on a loaded machine)
    make_run(root, model="slow", width=384, layers=6, steps=0)
    pid, fd = spawn(["slow", "--root", str(root), "min_new_tokens=1900", "max_new_tokens=1900"])  # a long answer
    seen: list[str] = []
    read_until(fd, "you> ", seen)
    os.write(fd, b"Hello\r")
    read_until(fd, "slow> ", seen)  # the answer has begun; ~1,900 tokens are still to come
    os.write(fd, b"\x03")  # Ctrl-C while it generates: the answer stops, back to the prompt
    out = read_until(fd, "you> ", seen)
    assert "(interrupted)" in out
    os.write(fd, b"\x04")  # Ctrl-D on an empty line: end of input
    assert finish(pid, fd, seen) == 0
    assert "Traceback" not in "".join(seen)


def test_ctrl_c_at_the_prompt_exits_130_quietly(root, monkeypatch, capsys):
    def interrupted(prompt):
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr("builtins.input", interrupted)
    with pytest.raises(SystemExit) as e:
        chat.main(["--root", str(root)], "tiny")
    assert e.value.code == 130 and "Traceback" not in capsys.readouterr().err
