"""The Gradio page: served on a free loopback port with the tiny chat model (tests/test_chat.py), queried over HTTP
with gradio_client: the answer streams and is the model's; errors come back as one short message; a port in use
is one line; the server is closed at the end."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from shared.inference import webui
from shared.config.errors import UserError
from test_chat import make_run


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gradio_client import Client

    from shared.config.runs import find_run
    from shared.inference.generate import load

    root = tmp_path_factory.getbasetemp() / "chat-runs"
    make_run(root)
    model, tok, recipe = load(find_run("tiny", None, root))
    demo = webui.build(model, tok, recipe["generation"], title="slm: tiny")
    url = webui.launch(demo, "127.0.0.1", free_port(), block=False)
    try:
        yield Client(url, analytics_enabled=False, verbose=False), root
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_answer_streams_over_http(served):
    client, _ = served
    job = client.submit("Hello", 0, 50, 24, api_name="/generate")  # greedy: the memorised answer
    assert job.result(timeout=120) == "Hi! I am fine."
    updates = job.outputs()
    assert len(updates) > 1 and all("Hi! I am fine.".startswith(u) for u in updates)  # a growing text
    sampled = client.predict("How are you?", 0.8, 20, 24, api_name="/generate")
    assert isinstance(sampled, str) and sampled.strip()


def test_errors_reach_the_client_as_one_short_message(served, monkeypatch):
    from gradio_client.exceptions import AppError

    client, _ = served
    with pytest.raises(AppError, match="type a question first"):
        client.predict("   ", 0, 50, 24, api_name="/generate")

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals\nTraceback (most recent call last): ...")

    monkeypatch.setattr(webui.chat, "stream", broken)
    with pytest.raises(AppError) as e:
        client.predict("Hello", 0, 50, 24, api_name="/generate")
    assert str(e.value).startswith("generation failed (RuntimeError)") and "secret" not in str(e.value)


def test_a_port_in_use_is_one_line_before_the_model_loads_and_from_gradios_own_check(served, monkeypatch):
    _, root = served
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as e:
            webui.serve(["--root", str(root), "--port", str(port)], "tiny")
        assert str(e.value) == (f"port {port} on 127.0.0.1 is already in use (another server is running there); "
                                f"choose another with --port {port + 1} (make: PORT={port + 1})")
        monkeypatch.setattr(webui, "port_free", lambda host, port: True)  # lose the race: Gradio's check fires
        with webui.gr.Blocks() as demo:
            webui.gr.Markdown("never served")
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            webui.launch(demo, "127.0.0.1", port, block=False)
        demo.close()


def test_a_plain_language_model_gets_its_prompt_continued(served):
    from shared.config.runs import find_run
    from shared.inference.generate import load

    _, root = served
    model, tok, _ = load(find_run("tiny", None, root))
    texts = list(webui.answers(model, tok, {"max_new_tokens": 5}, "<user>Hello<end>\n<assistant>", 0, 0, 5))
    assert texts[0] == "<user>Hello<end>\n<assistant>" and texts[-1].startswith(texts[0]) and len(texts) > 1


# ----------------------------------------------------------------------------------------------------------------
# a real browser (headless Chromium through the DevTools protocol): skipped where Chromium is not installed; CI
# (.ci/run) installs it where it can. Every wait is on a state (a file, the page, the server), never a fixed sleep,
# so a slow machine only waits longer.

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def until(check, what: str, timeout: float):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def browser_ask(url: str, question: str, screenshot: Path, served_answer, timeout: float = 180) -> str:
    """Open `url` in headless Chromium, type `question`, press Generate, save a PNG of the page to `screenshot`;
    returns the answer box's text once it shows `served_answer()`: the server's whole answer, None until its
    generator has finished (a page read earlier could hold half a stream)."""
    import base64
    import itertools
    import json
    import shutil
    import subprocess
    import tempfile
    import urllib.request

    from websockets.sync.client import connect

    exe = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    profile = Path(tempfile.mkdtemp(prefix="slm-chromium-"))
    with open(profile / "stderr.txt", "w") as err:
        proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                 f"--user-data-dir={profile}", "--window-size=1000,820", url],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        def devtools_port():  # Chromium writes its port into the profile once DevTools listens
            if proc.poll() is not None:
                said = (profile / "stderr.txt").read_text()[-500:]
                raise AssertionError(f"chromium exited {proc.returncode}: {said}")
            active = profile / "DevToolsActivePort"
            return active.is_file() and active.read_text().split("\n")[0].strip()

        port = until(devtools_port, "chromium's DevTools server", timeout)

        def page():
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
            return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

        ids = itertools.count(1)
        with connect(until(page, "the page's target", timeout), max_size=None, open_timeout=30) as ws:
            def call(method, **params):
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while (reply := json.loads(ws.recv(timeout=timeout))).get("id") != n:  # skip events
                    pass
                return reply.get("result", {})

            def js(expression):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            until(lambda: js("document.querySelectorAll('textarea').length >= 2 && "
                             "[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Generate')"),
                  "the page's text boxes and its Generate button", timeout)
            js("document.querySelector('textarea').focus()")
            call("Input.insertText", text=question)  # typed, as a keyboard would
            until(lambda: js("document.querySelector('textarea').value") == question, "the typed question", timeout)
            js("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Generate').click()")
            shown = ("document.querySelector('.generating') ? null : "  # the status tracker's class while streaming
                     "document.querySelectorAll('textarea')[1].value")
            last = {}

            def answered():
                last["server"], last["page"] = served_answer(), js(shown)
                return last["server"] is not None and last["page"] == last["server"] and last["page"]

            try:
                text = until(answered, "the page to show the server's whole answer", timeout)
            except AssertionError as e:
                raise AssertionError(f"{e} (server: {last.get('server')!r}, page: {last.get('page')!r})") from None
            png = call("Page.captureScreenshot", format="png")["data"]
        screenshot.write_bytes(base64.b64decode(png))
        return text
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_a_browser_types_a_question_and_sees_the_streamed_answer(served, tmp_path, monkeypatch):
    import shutil
    import threading

    if not any(shutil.which(b) for b in BROWSERS):
        pytest.skip("no Chromium here (apt-get install chromium; .ci/run installs it when run as root)")
    finished, served_answers = threading.Event(), []
    answers = webui.answers

    def recorded(*args):  # the server's side of the request: its last text, once the stream has ended
        for text in answers(*args):
            served_answers.append(text)
            yield text
        finished.set()

    monkeypatch.setattr(webui, "answers", recorded)
    client, _ = served
    png = tmp_path / "page.png"
    text = browser_ask(client.src, "Hello", png, lambda: served_answers[-1] if finished.is_set() else None)
    assert text == "Hi! I am fine."  # the slider's default: greedy (the preset)
    assert len(served_answers) > 1  # it streamed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
