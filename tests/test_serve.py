"""Serving over the OpenAI API (shared/inference/serve.py on transformers' server), driven by the real `openai` client against
a live server, and the chat templates runs save (token for token what training saw and what `make chat` sends).

The served model is our own GPT (slm_gpt) that has memorised two exchanges in the nanoGPT chat format (trained here
in a few seconds), so greedy answers are known: "Hello" -> "Hi! I am fine.", "How are you?" -> "Good, thanks."
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import REPO, FakeTrainer, sft_first_batch, split_at_loss
from shared.inference.chat import Chat, ChatFormat, chat_template

NANOGPT = {"user": "<user>{text}<end>\n", "assistant": "<assistant>", "end": "<end>", "separator": "\n"}
HELLO = "<user>Hello<end>\n<assistant>Hi! I am fine.<end>\n"
HOW = "<user>How are you?<end>\n<assistant>Good, thanks.<end>\n"
TEXTS = [HELLO, HOW, HELLO + HOW, HOW + HELLO]
CONTEXT = 256


# ----------------------------------------------------------------------------------------------------------------
# chat templates: what training saw, what make chat sends


def tokenizer_for(kind: str, folder: Path, texts: list[str]):
    """A small tokenizer of the kind a recipe trains with: phi2's ([PAD] [EOS] ... as its special tokens), MiniGLM's
    (byte-level BPE, <|endoftext|>), nanoGPT's (the same + <user> <assistant> <end> as single tokens)."""
    from shared.data.tokenizer import train_bpe, train_tokenizer, with_specials, wrap

    if kind == "phi2":
        specials = ["[PAD]", "[EOS]", "[SEP]", "[BOS]", "[UNK]"]
        tok = wrap(train_tokenizer(iter([texts]), "bpe", 500, 1, specials, max_cjk_chars=1), specials, 512)
        tok.save_pretrained(str(folder))
        return tok
    tok = train_bpe(iter([texts]), 500, 1, folder)
    if kind == "nanogpt":
        tok = with_specials(tok, SimpleNamespace(special_tokens=["<user>", "<assistant>", "<end>"]))
        tok.save_pretrained(str(folder))
    return tok


def make_chat_prompt(tok, fmt: ChatFormat, history: list[tuple[str, str]], question: str) -> list[int]:
    """The token ids `make chat` sends for this conversation (shared.inference.chat.Chat, a context that fits it all)."""
    chat = Chat(SimpleNamespace(config=SimpleNamespace(n_positions=10**6)), tok, {"max_new_tokens": 8}, fmt)
    chat.history = list(history)
    return tok(chat.prompt(question), add_special_tokens=False).input_ids


def as_messages(history: list[tuple[str, str]], question: str | None = None) -> list[dict]:
    out = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return out + ([{"role": "user", "content": question}] if question is not None else [])


SFT_CASES = {  # recipe, tokenizer kind, its data's columns, records (question, answer) as the data has them
    "phi2-sft": ("recipes/phi2/sft.yaml", "phi2", lambda q, a: {"instruction": q, "input": "", "output": a},
                 "train_phi2/phi2_tiny.json", "{hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 2, num_hidden_layers: 1}"),
    "minigl-finetune": ("recipes/minigl/finetune.yaml", "minigl", lambda q, a: {"Question": q, "Answer": a},
                        "minigl/gpt_tiny.json", "{n_layer: 1, n_head: 2, n_embd: 32}"),
}
QA = [("苇川在哪里？", "苇川在河的东岸。"), ("老街叫什么？", "老街叫望河街。"), ("What is 2 + 2?", "It is 4."),
      ("写一句诗。", "春风吹过苇川。"), ("谁修的桥？", "桥是一九五六年修的。")]


@pytest.mark.parametrize("case", SFT_CASES)
def test_the_chat_template_writes_what_sft_trained_on_and_what_make_chat_sends(case, tmp_path):
    """TRL's own first training batch of the recipe (its templates, TRL's EOS) against `apply_chat_template` of the
    same exchange; then a multi-turn conversation against make chat's prompt."""
    from shared.config.recipe import load_recipe

    path, kind, columns, config, sizes = SFT_CASES[case]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(columns(q, a), ensure_ascii=False) + "\n" for q, a in QA), encoding="utf-8")
    tok = tokenizer_for(kind, tmp_path / "tok", [f"{q}\n{a}" for q, a in QA] * 3)
    recipe = load_recipe(REPO / path, [
        f"run.output_root={tmp_path}", f"data.path={data}", "data.dataset=null", f"tokenizer.name={tmp_path}/tok",
        "model.init_from=null", f"model.config={config}", f"model.overrides={sizes}", "data.validation_fraction=0.2",
        "training.per_device_train_batch_size=8", "training.eval_strategy=no", "training.save_strategy=no"])
    tok.chat_template = chat_template(recipe.generation)
    answers = {a: q for q, a in QA}
    rows = sft_first_batch(recipe)
    assert len(rows) == 4
    for ids, labels in rows:
        _, answer = split_at_loss(tok, ids, labels)
        exchange = as_messages([(answers[answer], answer)])
        assert tok.apply_chat_template(exchange, tokenize=True, return_dict=True)["input_ids"] == ids
    fmt = ChatFormat.from_preset(recipe.generation)
    history = QA[:2]
    assert tok.apply_chat_template(as_messages(history, QA[2][0]), add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"] == make_chat_prompt(tok, fmt, history, QA[2][0])


def test_every_chat_recipe_saves_one_of_these_templates():
    """DPO, the RAG-SFT stage and the LSTM finetune use their SFT's format; a recipe without a chat format (Phi-3's
    poems) saves none."""
    from shared.config.recipe import load_recipe

    def template(path):
        return chat_template(load_recipe(REPO / path).generation)

    assert template("recipes/phi2/dpo.yaml") == template("recipes/phi2/sft.yaml") is not None
    assert template("recipes/minigl/lstm-finetune.yaml") == template("recipes/minigl/finetune.yaml") is not None
    assert template("recipes/nanogpt/finetune.yaml") is not None
    assert template("recipes/phi2/rag-sft.yaml") == template("recipes/phi2/sft.yaml")
    assert template("recipes/phi3/pretrain.yaml") is None


def test_the_chat_template_writes_nanogpts_training_text_and_make_chats_prompt(tmp_path):
    """nanoGPT trains on token bins of whole conversations (<user>..<end>\\n<assistant>..<end>, EOS between them)."""
    from datasets import Dataset

    from shared.data import bins
    from shared.config.recipe import load_recipe
    from train_nanogpt.create_first_training_data import chat_text

    history = [("Hi?", "Hello."), ("And you?", "Fine, thanks.")]
    text = chat_text([t for q, a in history for t in (("user", q), ("assistant", a))])
    tok = tokenizer_for("nanogpt", tmp_path / "tok", [text] * 4)
    recipe = load_recipe(REPO / "recipes/nanogpt/finetune.yaml")
    tok.chat_template = chat_template(recipe.generation)
    bins.write_bins(tmp_path / "bins", {"train": Dataset.from_dict({"text": [text]})}, tok, num_proc=1)
    trained = bins.read_bin(tmp_path / "bins" / "train.bin").tolist()
    assert trained == tok.apply_chat_template(as_messages(history), tokenize=True, return_dict=True)["input_ids"] \
        + [tok.eos_token_id]
    fmt = ChatFormat.from_preset(recipe.generation)
    ids = tok.apply_chat_template(as_messages(history[:1], "Why?"), add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    assert ids == make_chat_prompt(tok, fmt, history[:1], "Why?")
    assert tok.convert_ids_to_tokens(ids[-1]) == "<assistant>"
    with pytest.raises(Exception, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    system = [{"role": "system", "content": "Be brief."}] + as_messages([], "Why?")
    assert tok.apply_chat_template(system, add_generation_prompt=True, tokenize=False) == "<user>Why?<end>\n<assistant>"


def test_save_final_writes_the_template_or_keeps_the_tokenizers(tmp_path):
    """save_final (the one place every training run writes final/): a recipe with a chat_format writes its template;
    one without (rag-sft) keeps the tokenizer's, i.e. its SFT model's."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from shared.config.recipe import load_recipe
    from shared.training.train import save_final

    tok = tokenizer_for("phi2", tmp_path / "tok", ["##提问:\n你好\n\n##回答:\n你好！"] * 4)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    for path, expected in (("recipes/phi2/sft.yaml", "sft"), ("recipes/phi2/rag-sft.yaml", "sft")):
        recipe = load_recipe(REPO / path, [f"run.output_root={tmp_path}"])
        final = save_final(FakeTrainer(model), tok, recipe)
        saved = AutoTokenizer.from_pretrained(final).chat_template
        assert saved == chat_template(load_recipe(REPO / f"recipes/phi2/{expected}.yaml").generation), path


# ----------------------------------------------------------------------------------------------------------------
# a live server


def recite_run(root: Path) -> Path:
    """runs/tiny/chat/final: our GPT trained to recite TEXTS, its tokenizer (chat markers as special tokens, no chat
    template: a run saved before runs carried one) and a recipe.yaml with the generation preset."""
    from shared.models.gpt import GPTConfig, GPTForCausalLM

    final = root / "tiny" / "chat" / "final"
    if (final / "config.json").is_file():
        return final
    tok = tokenizer_for("nanogpt", root / ".tok", TEXTS * 4)
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(vocab_size=len(tok), block_size=CONTEXT, n_layer=2, n_head=4, n_embd=64,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id))
    batch = tok(TEXTS, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: one thread is the fastest
    try:
        for _ in range(150):
            loss = model(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1, loss.item()
    model.save_pretrained(final)
    tok.save_pretrained(final)
    generation = {"do_sample": False, "max_new_tokens": 24, "chat_format": NANOGPT}
    (final / "recipe.yaml").write_text(yaml.safe_dump({"generation": generation}), encoding="utf-8")
    return final


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """shared.inference.serve's app under uvicorn in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key="none", max_retries=0, timeout=60)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "serve-runs"
    recite_run(root)
    return root


@pytest.fixture(scope="module")
def live(root):
    from shared.inference import serve

    served = serve.open_served("tiny", "chat", str(root))
    server = Live(serve.app(served))
    yield server
    server.stop()


def ask(client, question: str, history=(), **kw) -> str:
    out = client.chat.completions.create(model="tiny/chat", messages=as_messages(list(history), question), **kw)
    return out.choices[0].message.content


def test_models_and_a_chat_completion_answer_like_make_chat(live, root):
    from shared.inference import chat
    from shared.inference import serve
    from shared.config.runs import find_run
    from shared.inference.generate import load

    client = live.client()
    assert [m.id for m in client.models.list().data] == ["tiny/chat"]
    out = client.chat.completions.create(model="tiny/chat", messages=as_messages([], "Hello"))
    assert out.choices[0].message.content == "Hi! I am fine." and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 24  # stopped at the end marker, not at max_tokens
    assert ask(client, "How are you?", [("Hello", "Hi! I am fine.")]) == "Good, thanks."
    model, tok, recipe = load(find_run("tiny", "chat", root))  # make chat, on the same run
    repl = chat.Chat(model, tok, recipe["generation"])
    assert [list(repl.reply(q))[-1] for q in ("Hello", "How are you?")] == ["Hi! I am fine.", "Good, thanks."]
    served = serve.open_served("tiny", "chat", str(root))  # a run saved without a template gets its recipe's
    assert served.tokenizer.chat_template == ChatFormat(**NANOGPT).template()


def test_a_streamed_answer_arrives_in_chunks_before_the_end(live):
    client = live.client()
    start, pieces = time.perf_counter(), []
    for chunk in client.chat.completions.create(model="tiny/chat", messages=as_messages([], "Hello"), stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append((time.perf_counter() - start, chunk.choices[0].delta.content))
        if chunk.choices and chunk.choices[0].finish_reason:
            finish, end = chunk.choices[0].finish_reason, time.perf_counter() - start
    assert "".join(p for _, p in pieces) == "Hi! I am fine." and finish == "stop"
    assert len(pieces) >= 3, pieces  # token by token, not one block at the end
    assert pieces[0][0] < end


def test_completions_and_request_fields_override_the_preset(live):
    client = live.client()
    prompt = "<user>Hello<end>\n<assistant>"
    out = client.completions.create(model="tiny/chat", prompt=prompt)  # the preset: greedy, 24 new tokens
    assert out.usage.completion_tokens == 24 and out.choices[0].finish_reason == "length"  # (not the server's 1024)
    assert out.choices[0].text.startswith("Hi! I am fine.")
    assert client.completions.create(model="tiny/chat", prompt=prompt, stop=["<end>"]).choices[0].text == \
        "Hi! I am fine."  # a one-token stop: its id
    assert client.completions.create(model="tiny/chat", prompt=prompt, stop=" am").choices[0].text == "Hi! I"
    streamed = client.completions.create(model="tiny/chat", prompt=prompt, stop=[" fine"], stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Hi! I am"  # the stop is cut from streams too
    short = client.completions.create(model="tiny/chat", prompt=prompt, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    sampled = {ask(client, "Hello", temperature=2.0, seed=s, max_tokens=6) for s in range(4)}
    assert sampled != {"Hi! I am fine."}  # a temperature above 0 samples (the preset is greedy)


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(live):
    import httpx
    import openai

    client = live.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=as_messages([], "Hello"))
    assert e.value.code == "model_not_found" and "tiny/chat" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny/chat", messages=as_messages([], "Hello"), max_tokens=CONTEXT)
    assert e.value.param == "max_tokens" and f"maximum context length is {CONTEXT}" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny/chat", messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny/chat", prompt="x" * 2000)  # longer than the context
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny/chat", messages=as_messages([], "Hello"), temperature=-1)
    for body in (b"{not json", b"[1, 2]"):
        r = httpx.post(f"{live.url}/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert ask(client, "Hello") == "Hi! I am fine."  # still serving


def test_eight_concurrent_clients_get_their_own_answers(live):
    """8 clients x 4 requests each (chat, streamed chat, multi-turn, completion), all at once: every answer equals
    the same request sent alone (greedy), within a bounded time."""
    client = live.client()
    requests = [("chat", "Hello", ()), ("stream", "How are you?", ()), ("chat", "How are you?", (("Hello", "Hi! I am fine."),)),
                ("completion", "<user>How are you?<end>\n<assistant>", ())]

    def send(kind, text, history, max_tokens):
        if kind == "completion":
            return client.completions.create(model="tiny/chat", prompt=text, max_tokens=max_tokens).choices[0].text
        if kind == "stream":
            chunks = client.chat.completions.create(model="tiny/chat", messages=as_messages(list(history), text),
                                                    max_tokens=max_tokens, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return ask(client, text, history, max_tokens=max_tokens)

    jobs = [(c, i, *requests[(c + i) % 4], 8 + (c * 4 + i) % 9) for c in range(8) for i in range(4)]
    alone = {job: send(*job[2:]) for job in jobs}  # one at a time
    answers, failures = {}, []

    def client_thread(c):
        try:
            for job in (j for j in jobs if j[0] == c):
                answers[job] = send(*job[2:])
        except Exception as e:  # noqa: BLE001  (reported below)
            failures.append(repr(e))

    start = time.perf_counter()
    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures and len(answers) == 32, failures
    assert time.perf_counter() - start < 120
    assert answers == alone
    assert len(set(alone.values())) > 4  # the requests really differ


@pytest.mark.slow
def test_make_serve_answers_the_openai_client(root):
    """`make serve` as a user runs it: its own process, the port from PORT, 127.0.0.1 only."""
    import os
    import subprocess
    import sys

    from openai import OpenAI

    port = free_port()
    venv = Path(sys.executable).parent.parent
    proc = subprocess.Popen(["make", "--no-print-directory", "serve", "MODEL=tiny", "RUN=chat", f"PORT={port}",
                             f"VENV={venv}", f"ARGS=--root {root}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            start_new_session=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
        deadline = time.time() + 90
        while True:
            try:
                assert [m.id for m in client.models.list().data] == ["tiny/chat"]
                break
            except Exception:  # noqa: BLE001  (not up yet)
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
                time.sleep(0.5)
        assert ask(client, "Hello") == "Hi! I am fine."
    finally:
        os.killpg(proc.pid, 15)
        out = proc.communicate(timeout=30)[0]
    assert f"on http://127.0.0.1:{port}/v1" in out, out
