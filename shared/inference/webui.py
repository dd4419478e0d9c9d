"""A web page for any trained run: a prompt box, three decoding sliders, the answer streamed as it is generated.

    python -m shared.inference.webui minigl [--run NAME] [--host 127.0.0.1] [--port 7860] [top_p=0.9 ...]

The page is a Gradio Blocks app built around the same pieces as the terminal chat (shared/inference/chat.py): a run with a
`generation.chat_format` is asked one question at a time in its turn format and the answer stops at its end
marker; any other run continues the prompt like `make generate`. The sliders start at the recipe's preset
(temperature 0 = greedy, top-k 0 = off) and `key=value` arguments change the rest of it.

Streaming is a generator that yields the growing text; Gradio sends each version to the browser. Gradio's queue
runs one generation at a time (one model, one device). Errors reach the browser as one short message, never a
traceback: problems the user can fix (an empty question, one too long for the context) as that message, anything
else as "generation failed", with the traceback in the server's terminal. Analytics are off, the server listens
on 127.0.0.1 unless --host says otherwise, and a port already in use is one line, checked before the model loads.
"""
from __future__ import annotations

import html
import os
import socket
import sys
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
import gradio as gr  # noqa: E402

from shared.config import catalog  # noqa: E402
from shared.inference import chat  # noqa: E402
from shared.config.errors import UserError, run_main  # noqa: E402
from shared.inference.generate import open_run, preset_overrides, run_parser  # noqa: E402
from shared.models.registry import context_length  # noqa: E402


def answers(model, tokenizer, preset: dict, text: str, temperature: float, top_k: int, max_new_tokens: int):
    """The growing answer to `text` with the sliders' values (the event handler, without the Gradio wrapping)."""
    preset = {**preset, "do_sample": temperature > 0, "temperature": temperature, "top_k": int(top_k),
              "max_new_tokens": int(max_new_tokens)}
    if preset.get("chat_format"):
        if not text.strip():
            raise UserError("type a question first")
        yield from chat.Chat(model, tokenizer, preset).reply(text.strip())
    else:  # a plain language model: the prompt and its continuation
        yield text
        for continuation in chat.stream(model, tokenizer, text, preset):
            yield text + continuation


def build(model, tokenizer, preset: dict, title: str = "slm") -> gr.Blocks:
    """The page: prompt, temperature / top-k / max-new-tokens sliders, a streamed answer (API name: /generate)."""
    is_chat = bool(preset.get("chat_format"))
    if is_chat:
        chat.ChatFormat.from_preset(preset)  # a bad format: one line now, not at the first question
    limit = context_length(model.config) or 2048
    sampling = bool(preset.get("do_sample")) and preset.get("temperature", 1.0) > 0

    def generate(text, temperature, top_k, max_new_tokens):
        try:
            yield from answers(model, tokenizer, preset, text or "", temperature, top_k, max_new_tokens)
        except UserError as e:
            raise gr.Error(html.escape(str(e)), print_exception=False) from None
        except Exception as e:  # a bug: the traceback goes to the terminal only
            traceback.print_exc()
            raise gr.Error(f"generation failed ({type(e).__name__}); the server's terminal has the details",
                           print_exception=False) from None

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {html.escape(title)}")
        prompt = gr.Textbox(label="question" if is_chat else "prompt", lines=3, autofocus=True,
                            placeholder="type a question, then Enter" if is_chat else "text to continue, then Enter")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=float(preset.get("temperature", 1.0)) if sampling else 0.0,
                                    step=0.05, label="temperature", info="0 = greedy")
            top_k = gr.Slider(0, 200, value=int(preset.get("top_k", 50)), step=1, label="top-k", info="0 = off")
            max_new = gr.Slider(1, limit, step=1, label="max new tokens", info=f"context: {limit}",
                                value=min(int(preset.get("max_new_tokens") or chat.DEFAULT_NEW_TOKENS), limit))
        button = gr.Button("Generate", variant="primary")
        answer = gr.Textbox(label="answer" if is_chat else "text", lines=8, interactive=False)
        if preset.get("prompts"):
            gr.Examples([[p] for p in preset["prompts"]], inputs=[prompt])
        gr.on([prompt.submit, button.click], generate, inputs=[prompt, temperature, top_k, max_new],
              outputs=answer, api_name="generate")
    return demo


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, like uvicorn: a closed port is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_taken(host: str, port: int) -> UserError:
    return UserError(f"port {port} on {host} is already in use (another server is running there); "
                     f"choose another with --port {port + 1} (make: PORT={port + 1})")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Serve `demo`; returns the local URL (at once with block=False; after Ctrl-C otherwise)."""
    if not port_free(host, port):
        raise port_taken(host, port)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=False,
                                share=False, inbrowser=False, quiet=True)  # (app, local URL, share URL)
    except OSError:  # Gradio's own check ("Cannot find empty port..."), when another server won the race
        raise port_taken(host, port) from None
    print(f"serving on {url}  (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host}: anyone who can reach this machine can use the model", file=sys.stderr)
    if block:
        demo.block_thread()  # returns after Ctrl-C, server closed
    return url


def serve(argv: list[str], model_name: str | None = None) -> None:
    parser = run_parser("A web page to try a trained slm model (Gradio).", model_name,
                        f"{catalog.choices()} (or a folder under runs/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    args = parser.parse_intermixed_args(argv)
    name = model_name or args.model
    overrides = preset_overrides(args, "webui")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if not port_free(args.host, args.port):  # before the minutes a model can take to load
        raise port_taken(args.host, args.port)
    path, model, tok, preset = open_run(args, model_name, overrides)
    print(f"model: {path}", file=sys.stderr, flush=True)
    launch(build(model, tok, preset, title=f"slm: {name} ({path.parent.name})"), args.host, args.port)


def run(model_name: str) -> None:
    """A model folder's web page script (minigl/sample_gradio.py: `webui.run("minigl")`); errors: one line, exit 2."""
    run_main(lambda argv: serve(argv, model_name))


if __name__ == "__main__":
    run_main(serve)
