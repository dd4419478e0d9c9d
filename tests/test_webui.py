"""The Gradio page: served on a free loopback port with the tiny chat model (tests/test_chat.py), queried over HTTP
with gradio_client: the answer streams and is the model's; errors come back as one short message; a port in use
is one line; the server is closed at the end."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from shared import webui
from shared.errors import UserError
from test_chat import make_run


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gradio_client import Client

    from shared.generate import find_run, load

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
    from shared.generate import find_run, load

    _, root = served
    model, tok, _ = load(find_run("tiny", None, root))
    texts = list(webui.answers(model, tok, {"max_new_tokens": 5}, "<user>Hello<end>\n<assistant>", 0, 0, 5))
    assert texts[0] == "<user>Hello<end>\n<assistant>" and texts[-1].startswith(texts[0]) and len(texts) > 1


# ----------------------------------------------------------------------------------------------------------------
# a real browser (headless Chromium through the DevTools protocol): skipped where Chromium is not installed


def browser_ask(url: str, question: str, screenshot: Path, timeout: float = 90) -> str:
    """Open `url` in headless Chromium, type `question`, press Generate, wait for the answer to settle, save a PNG of
    the page to `screenshot`; returns the answer box's text."""
    import base64
    import itertools
    import json
    import re
    import shutil
    import subprocess
    import tempfile
    import time
    import urllib.request

    from websockets.sync.client import connect

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    profile = tempfile.mkdtemp(prefix="slm-chromium-")
    proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1000,820", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            if m := re.search(r"ws://127\.0\.0\.1:(\d+)/", line):
                break
        else:
            raise AssertionError("chromium did not start its DevTools server")
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{m[1]}/json/list", timeout=30))
        ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        ids = itertools.count(1)
        with connect(ws_url, max_size=None, open_timeout=30) as ws:
            def call(method, **params):
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while (reply := json.loads(ws.recv(timeout=timeout))).get("id") != n:  # skip events
                    pass
                return reply.get("result", {})

            def js(expression):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            def wait(expression, what):
                deadline = time.monotonic() + timeout
                while not (value := js(expression)):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the page never showed {what}")
                    time.sleep(0.2)
                return value

            wait("document.querySelectorAll('textarea').length >= 2", "its text boxes")
            js("document.querySelector('textarea').focus()")
            call("Input.insertText", text=question)  # typed, as a keyboard would
            js("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Generate').click()")
            answer = ("document.querySelector('.generating') ? '' : "  # the status tracker's class while streaming
                      "document.querySelectorAll('textarea')[1].value")
            text, last = wait(answer, "an answer"), None
            while text != last:  # settled: the same text twice in a row, no generation running
                time.sleep(0.4)
                text, last = wait(answer, "the end of the answer"), text
            png = call("Page.captureScreenshot", format="png")["data"]
        screenshot.write_bytes(base64.b64decode(png))
        return text
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_a_browser_types_a_question_and_sees_the_streamed_answer(served, tmp_path):
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium here (apt-get install chromium)")
    if not os.environ.get("SLM_BROWSER_TEST"):  # a real browser is slow and timing-sensitive on a loaded 2-core CI
        pytest.skip("set SLM_BROWSER_TEST=1 to drive a real headless Chromium (docs/gradio-minigl.png came from it)")
    client, _ = served
    png = tmp_path / "page.png"
    assert browser_ask(client.src, "Hello", png) == "Hi! I am fine."  # the slider's default: greedy (the preset)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
