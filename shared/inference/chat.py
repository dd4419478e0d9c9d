"""Chat with any chat-shaped model: one REPL, the turn format read from the run's recipe.

A chat model is a language model trained on conversations written in some fixed text format. To talk to it we
write the conversation so far in that same format, end with the opening of an assistant turn, and let the model
continue until it writes the end marker. The format is data, saved with the run as `generation.chat_format`:

    generation:
      chat_format:
        system: ""                       # optional: written once, before the first turn
        user: "<user>{text}<end>\\n"      # a user turn; {text} is where the message goes (exactly once)
        assistant: "<assistant>"         # opens the assistant's answer; the prompt ends with it ("" if `user`
                                         # already ends with the answer's opening)
        end: "<end>"                     # the model writes it after an answer: generation stops there
        separator: "\\n"                  # optional: written after each finished answer, before the next turn

    -> <user>Hello<end>\\n<assistant>Hi!<end>\\n<user>How are you?<end>\\n<assistant>   (the nanoGPT document)

Phi-2's SFT format is `{user: "##提问:\\n{text}\\n", assistant: "##回答:\\n", end: "[EOS]"}`; MiniGLM joins question and
answer with a marker: `{user: "{text}", assistant: "[SEP]", end: "<|endoftext|>"}`. Generation stops at `end`
and also at the opening of a user turn (the text of `user` before {text}): a model that starts writing the
user's next message has finished its answer. A marker that is one token of the tokenizer (a special token such as
`<end>` or the EOS) stops by its id; a longer one by a stop string (transformers' `stop_strings`, which needs the
tokenizer passed to `generate`), and the streamed text is held back while it could still be the start of a marker,
so no half marker ever reaches the screen.

Every chat run also saves the format as its tokenizer's chat template (`ChatFormat.template()`, in final/), so
`tokenizer.apply_chat_template` and any server built on it (`make serve`) write what this REPL writes.

The conversation is kept, so the model sees earlier turns. The model's context is finite: the prompt gets the
context minus the room for the answer (`max_new_tokens`, at most half the context), and when it would not fit the
oldest turns are dropped, whole, until it does. Decoding (temperature, top_k, top_p...) is the recipe's preset,
overridden by `key=value` arguments; `temperature=0` means greedy.

    python -m shared.inference.chat nanogpt [--run NAME] [temperature=0.7 top_k=40]     # REPL: /reset, /quit, Ctrl-D
    python -m shared.inference.chat nanogpt --prompt "Hello"                            # one answer, then exit

Answers stream as they are generated (a TextIteratorStreamer fed by `generate` in a second thread, so Ctrl-C can
stop an answer mid-way and return to the prompt). Ctrl-C at the prompt exits with 130, Ctrl-D with 0, no traceback.
Reads stdin line by line, so a pipe can drive it: `printf 'Hello\\nHow are you?\\n' | python -m shared.inference.chat nanogpt`.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import closing
from dataclasses import dataclass, fields
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from shared.config import catalog
from shared.config.errors import UserError, run_main
from shared.inference.generate import answer_processors, generation_config, open_run, preset_overrides, run_parser
from shared.models.registry import context_length
from shared.config.recipe import _suggest

DEFAULT_NEW_TOKENS = 256  # when the preset has no max_new_tokens
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


# ----------------------------------------------------------------------------------------------------------------
# the turn format


@dataclass(frozen=True)
class ChatFormat:
    user: str
    end: str
    assistant: str = ""
    system: str = ""
    separator: str = ""

    @classmethod
    def from_preset(cls, preset: dict, where: str = "generation") -> "ChatFormat":
        """The preset's `chat_format`, checked: one line naming the key when something is wrong."""
        spec = preset.get("chat_format")
        if spec is None:
            raise UserError(f"{where}: no generation.chat_format, so this is not a chat model "
                            f"(use `make generate` to continue text, or add a chat_format to the recipe)")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: generation.chat_format must be a mapping with user and end (+ assistant), "
                            f"got {spec!r}")
        known = [f.name for f in fields(cls)]
        for key, value in spec.items():
            if key not in known:
                raise UserError(f"{where}: unknown chat_format key '{key}'{_suggest(str(key), known)}; "
                                f"keys are {', '.join(known)}")
            if not isinstance(value, str):
                raise UserError(f"{where}: chat_format.{key} must be a string, got {value!r}")
        for key in ("user", "end"):
            if not spec.get(key):
                raise UserError(f"{where}: chat_format.{key} is required (a non-empty string)")
        if spec["user"].count("{text}") != 1:
            raise UserError(f"{where}: chat_format.user must contain {{text}} exactly once, got {spec['user']!r}")
        return cls(**spec)

    def turn(self, question: str, answer: str | None = None) -> str:
        """One exchange; without an answer, it ends with the assistant's opening (where the model continues)."""
        text = self.user.replace("{text}", question) + self.assistant
        return text if answer is None else text + answer + self.end + self.separator

    def render(self, history: list[tuple[str, str]], question: str) -> str:
        return self.system + "".join(self.turn(q, a) for q, a in history) + self.turn(question)

    def stops(self) -> list[str]:
        """Where an answer is over: the end marker, and the opening of a user turn when it has visible text."""
        opening = self.user.split("{text}")[0]
        return [self.end] + ([opening] if opening.strip() and opening != self.end else [])

    def template(self) -> str:
        """The format as a Jinja chat template (a tokenizer's `chat_template`): `apply_chat_template(messages,
        add_generation_prompt=True)` writes exactly `render(history, question)`, and a conversation that ends with
        an answer writes what training saw (no separator after the last answer). System messages are left out:
        these models were trained without one; any other role is an error."""
        before, after = self.user.split("{text}")
        q = lambda text: json.dumps(text, ensure_ascii=False)  # a Jinja string literal (Jinja reads the escapes)
        return ("{{- " + q(self.system) + " -}}"
                "{%- for m in messages -%}"
                "{%- if m['role'] == 'user' -%}{{- " + q(before) + " + m['content'] + " + q(after) + " -}}"
                "{%- elif m['role'] == 'assistant' -%}{{- " + q(self.assistant) + " + m['content'] + " + q(self.end)
                + " -}}{%- if not loop.last -%}{{- " + q(self.separator) + " -}}{%- endif -%}"
                "{%- elif m['role'] != 'system' -%}{{- raise_exception('unknown role ' + m['role'] + ': this "
                "model knows user and assistant turns') -}}"
                "{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{- " + q(self.assistant) + " -}}{%- endif -%}")


def chat_template(preset: dict, where: str = "generation") -> str | None:
    """The preset's chat_format as a chat template, or None for a model that is not a chat model."""
    return ChatFormat.from_preset(preset, where).template() if preset.get("chat_format") is not None else None


def with_template(tokenizer, preset: dict, where: str = "generation"):
    """The tokenizer, with its recipe's chat template when it has none (a run saved before runs carried one)."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = chat_template(preset, where)
    return tokenizer


def split_stops(tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(token ids, strings): a marker that is one token stops by its id, a longer one by a stop string."""
    ids, strings = [], []
    for marker in (s for s in stops if s):
        encoded = tokenizer.encode(marker, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
        else:
            strings.append(marker)
    return ids, strings


def fit_history(fmt: ChatFormat, history: list[tuple[str, str]], question: str, count, budget: int
                ) -> tuple[str, int]:
    """(prompt, how many oldest turns were dropped) so that count(prompt) <= budget tokens."""
    for drop in range(len(history) + 1):
        prompt = fmt.render(history[drop:], question)
        if count(prompt) <= budget:
            return prompt, drop
    raise UserError(f"the message alone is {count(prompt)} tokens and the prompt may have {budget} (the model's "
                    f"context minus the room kept for the answer): shorten it, or lower max_new_tokens")


# ----------------------------------------------------------------------------------------------------------------
# streaming an answer


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """(the part of `text` safe to show, whether a stop marker was found). Text before the first marker is safe;
    with no marker yet, a tail that could still grow into one is held back."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if hits:
        return text[:min(hits)], True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold], False


class Cancelled(StoppingCriteria):
    """Stops `generate` (in its thread) once the event is set: Ctrl-C, a closed browser tab."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def decoding(preset: dict) -> dict:
    """`temperature=0` means greedy; without sampling, the sampling knobs are dropped (no warnings about them)."""
    preset = dict(preset)
    if preset.get("temperature") == 0:
        preset["do_sample"] = False
    if not preset.get("do_sample"):
        for key in SAMPLING_KEYS:
            preset.pop(key, None)
    return preset


def streaming_config(preset: dict, tokenizer):
    """The preset as a checked GenerationConfig that can stream (beam search has no single stream to show)."""
    config = generation_config(decoding(preset), tokenizer)
    if (config.num_beams or 1) > 1:
        raise UserError(f"num_beams={config.num_beams}: answers are streamed token by token, which beam search "
                        f"can't do; override it with num_beams=1")
    return config


def stream(model, tokenizer, prompt: str, preset: dict, stops: list[str] = ()) -> Iterator[str]:
    """Yield the growing continuation of `prompt` (decoded, special tokens skipped), cut at the first stop marker."""
    stops = [s for s in stops if s]
    config = streaming_config(preset, tokenizer)
    stop_ids, stop_strings = split_stops(tokenizer, stops)
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    config.eos_token_id = list(dict.fromkeys(eos + stop_ids)) or None
    config.stop_strings = stop_strings or None

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
    room = (context_length(model.config) or 10**9) - ids.shape[1]
    if room < 1:
        raise UserError(f"the prompt is {ids.shape[1]} tokens, the model's context {ids.shape[1] + room}: shorten it")
    config.max_new_tokens = min(config.max_new_tokens or DEFAULT_NEW_TOKENS, room)
    config.min_new_tokens = min(config.min_new_tokens, room) if config.min_new_tokens else None
    ids = ids.to(model.device)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel, failure = threading.Event(), []

    def work():
        try:
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=streamer,
                               tokenizer=tokenizer, stopping_criteria=StoppingCriteriaList([Cancelled(cancel)]),
                               **answer_processors(preset))
        except BaseException as e:  # handed to the reading thread, which re-raises it
            failure.append(e)
            streamer.end()

    # not a daemon: Python waits for it at exit. A Ctrl-C that lands while the thread starts would otherwise leave a
    # daemon generating through interpreter shutdown ("terminate called without an active exception", SIGABRT)
    thread = threading.Thread(target=work)
    text, shown, stopped = "", "", False
    try:
        thread.start()
        for piece in streamer:
            text += piece
            safe, stopped = cut_at_stops(text, stops)
            if safe != shown:
                shown = safe
                yield shown
            if stopped:
                break
    finally:  # also on Ctrl-C or when the consumer stops reading: end the generation, don't leave it running
        cancel.set()
        if thread.is_alive():  # a Ctrl-C during start() may skip this: cancelled, it ends soon and exit waits for it
            thread.join()
    if failure:
        raise failure[0]
    if not stopped and text != shown:  # a held-back tail that never became a marker
        yield text


# ----------------------------------------------------------------------------------------------------------------
# a conversation


class Chat:
    """A conversation with one model: history of (question, answer), prompts that fit the context."""

    def __init__(self, model, tokenizer, preset: dict, fmt: ChatFormat | None = None):
        self.model, self.tokenizer, self.preset = model, tokenizer, preset
        self.fmt = fmt or ChatFormat.from_preset(preset)
        self.history: list[tuple[str, str]] = []
        self.dropped = 0  # turns dropped by the last prompt()

    def budget(self) -> int:
        """Prompt tokens allowed: the context minus the answer's room (max_new_tokens, at most half the context)."""
        limit = context_length(self.model.config)
        if limit is None:
            return 10**9
        return limit - min(self.preset.get("max_new_tokens") or DEFAULT_NEW_TOKENS, limit // 2)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt(self, question: str) -> str:
        """The prompt for the next answer; turns that no longer fit are dropped from the history for good."""
        prompt, self.dropped = fit_history(self.fmt, self.history, question, self.count, self.budget())
        del self.history[:self.dropped]
        return prompt

    def reply(self, question: str, prompt: str | None = None) -> Iterator[str]:
        """Stream the growing answer; once it is complete, the exchange joins the history."""
        answer = ""
        for answer in stream(self.model, self.tokenizer, prompt or self.prompt(question), self.preset,
                             self.fmt.stops()):
            yield answer
        self.history.append((question, answer))

    def reset(self) -> None:
        self.history.clear()


# ----------------------------------------------------------------------------------------------------------------
# the terminal


def say(chat: Chat, question: str, show_prompt: bool = False, label: str = "") -> None:
    """Print the answer to stdout as it streams (after `label`), then a newline."""
    prompt = chat.prompt(question)
    if chat.dropped:
        print(f"(dropped the {chat.dropped} oldest turn(s): the conversation no longer fits the model's context)",
              file=sys.stderr, flush=True)
    if show_prompt:
        print(f"[prompt] {prompt!r}", file=sys.stderr, flush=True)
    print(label, end="", flush=True)
    shown = ""
    with closing(chat.reply(question, prompt)) as answers:
        for answer in answers:
            print(answer[len(shown):], end="", flush=True)
            shown = answer
    print(flush=True)


def read_line(tty: bool, prompt: str) -> str:
    """One line from stdin (EOFError at the end). From a pipe, the line is echoed so stdout reads as a transcript."""
    if tty:
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    line = line.rstrip("\r\n")
    print(prompt + line, flush=True)
    return line


def repl(chat: Chat, name: str, show_prompt: bool = False) -> int:
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print("type a message; /reset starts a new conversation, /quit or Ctrl-D quits", file=sys.stderr, flush=True)
    while True:
        try:
            line = read_line(tty, "you> ")
        except EOFError:
            if tty:
                print(flush=True)
            return 0
        except KeyboardInterrupt:
            print(flush=True)
            return 130
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            chat.reset()
            print("(new conversation)", file=sys.stderr, flush=True)
            continue
        try:
            say(chat, text, show_prompt, label=f"{name}> ")
        except KeyboardInterrupt:
            print(" (interrupted)", flush=True)
        except UserError as e:  # a message too long for the context: say so, keep the session
            print(f"error: {e}", file=sys.stderr, flush=True)


def main(argv: list[str], model_name: str | None = None) -> None:
    parser = run_parser("Chat with a trained slm model in the turn format of its recipe.", model_name,
                        f"{catalog.choices(chat_only=True)} (or a folder under runs/)")
    parser.add_argument("--prompt", action="append",
                        help="answer this and exit (repeatable: the turns of one conversation; default: $SLM_PROMPT, "
                             "else the interactive REPL)")
    parser.add_argument("--show-prompt", action="store_true", help="print each full prompt (to stderr)")
    args = parser.parse_intermixed_args(argv)  # options may come after the model's name
    name = model_name or args.model
    path, model, tok, preset = open_run(args, model_name, preset_overrides(args, "chat"))
    fmt = ChatFormat.from_preset(preset, str(path / "recipe.yaml"))
    streaming_config(preset, tok)  # a bad value: one line now, not at the first message
    print(f"model: {path}  |  preset: " + ", ".join(f"{k}={v}" for k, v in decoding(preset).items()
                                                   if k not in ("prompts", "chat_format")),
          file=sys.stderr, flush=True)
    chat = Chat(model, tok, preset, fmt)
    prompts = args.prompt or ([os.environ["SLM_PROMPT"]] if os.environ.get("SLM_PROMPT") else None)
    if prompts:
        for prompt in prompts:
            say(chat, prompt, args.show_prompt)
        return
    code = repl(chat, name, args.show_prompt)
    if code:
        sys.exit(code)


def run(model_name: str) -> None:
    """A chat model's chat script (train_phi2/chat.py: `chat.run("phi2")`); errors: one line, exit code 2."""
    run_main(lambda argv: main(argv, model_name))


if __name__ == "__main__":
    run_main(main)
