"""Serve a trained run over the OpenAI API: transformers' own server (the FastAPI app of `transformers serve`) with
the run preloaded, and the little glue that makes it answer like the run and like the OpenAI API.

    make serve MODEL=nanogpt [RUN=finetune] [PORT=8000]      # = python -m shared.inference.serve nanogpt --port 8000
    python -m shared.inference.serve minigl --run finetune temperature=0.7 --continuous-batching

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="nanogpt/finetune", messages=[{"role": "user", "content": "Hello"}])

Endpoints (transformers'): GET /v1/models, POST /v1/chat/completions and /v1/completions (both with `stream`),
/v1/responses. The model is named `<model>/<run>`; it binds 127.0.0.1 unless --host says otherwise. What the glue
adds to transformers' server, each a small subclass of its own classes:
- the run's decoding preset is the default (its server would raise max_new_tokens to 1024); request fields override
  it: temperature (0 = greedy, > 0 samples), top_p, max_tokens, stop (cut from the answer, as OpenAI does);
- chat answers stop where `make chat` stops them (the chat format's end marker, or the opening of a user turn), and
  a run saved before chat templates existed gets its template from its recipe's chat_format;
- our own architectures (slm_gpt, slm_lstm) load (it loads by architecture name from the transformers namespace)
  and never run under continuous batching, which needs transformers' attention interface;
- bad requests get OpenAI-shaped errors ({"error": {"message", "type", "param", "code"}}) and the server keeps
  serving: an unknown model (404), malformed JSON, an empty message list, max_tokens beyond the context (400).
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import sys
from pathlib import Path

from shared.inference.chat import DEFAULT_NEW_TOKENS, ChatFormat, cut_at_stops, decoding, split_stops, with_template
from shared.config import catalog
from shared.config.errors import run_main
from shared.config.runs import find_run
from shared.inference.generate import generation_config, load, preset_overrides
from shared.models.registry import context_length

try:
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager, TimedModel
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState, _StreamError
except (ImportError, NameError) as e:  # fastapi/uvicorn come with gradio, openai is in requirements.txt
    raise SystemExit(f"error: serving needs fastapi, uvicorn and openai ({e}): run `make setup`") from None

ROOM = contextvars.ContextVar("room", default=None)  # tokens left for the answer of the request being handled


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> HTTPException:
    return HTTPException(status, detail={"message": message, "param": param, "code": code})


def openai_error(status: int, detail) -> JSONResponse:
    """The OpenAI API's error body; 4xx are invalid requests, the rest server errors."""
    body = detail if isinstance(detail, dict) else {"message": str(detail)}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": body.get("message", ""), "type": kind, "param": body.get("param"),
                                   "code": body.get("code")}}, status_code=status)


class Served:
    """One run, loaded: name, folder, model, tokenizer (with its chat template when it is a chat model), preset."""

    def __init__(self, name: str, path: Path, model, tokenizer, preset: dict):
        self.name, self.path, self.model, self.tokenizer = name, path, model, tokenizer
        self.preset = decoding(preset)
        self.format = ChatFormat.from_preset(preset, str(path / "recipe.yaml")) if preset.get("chat_format") else None
        with_template(tokenizer, preset, str(path / "recipe.yaml"))
        self.context = context_length(model.config)
        model.generation_config = generation_config(self.preset, tokenizer)  # the default of every request
        model.generation_config.max_new_tokens = model.generation_config.max_new_tokens or DEFAULT_NEW_TOKENS


class RunModels(ModelManager):
    """transformers' model manager, holding the one preloaded run under its name; any other name is a 404."""

    def __init__(self, served: Served):
        super().__init__(device=str(served.model.device))
        self.force_model = served.name
        self.loaded_models[self.process_model_name(served.name)] = TimedModel(served.model, -1, served.tokenizer)

    def shutdown(self) -> None:
        """Keep the run: transformers' POST /reset would otherwise unload the one model this server has."""


class Generation(GenerationState):
    """Continuous batching only for models written for transformers' attention interface (paged attention)."""

    def use_continuous_batching(self, model, modality) -> bool:
        return getattr(model, "_supports_attention_backend", False) and super().use_continuous_batching(model, modality)

    def get_manager(self, model_id: str, use_cb: bool = False):
        return StopsCut(super().get_manager(model_id, use_cb))


class StopsCut:
    """A generation manager whose answers end before their stop string (OpenAI leaves the stop sequence out)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate_non_streaming(self, model, processor, inputs, gen_config, request_id):
        text, n, ids = await self.inner.generate_non_streaming(model, processor, inputs, gen_config, request_id)
        return cut_at_stops(text, list(gen_config.stop_strings or []))[0], n, ids

    def generate_streaming(self, model, processor, inputs, gen_config, request_id, response_parser=None):
        queue, streamer = self.inner.generate_streaming(model, processor, inputs, gen_config, request_id,
                                                        response_parser=response_parser)
        stops = list(gen_config.stop_strings or [])
        if not stops:
            return queue, streamer
        out: asyncio.Queue = asyncio.Queue()

        async def pump():  # text that could still become a stop string is held back, text after one dropped
            text, shown, stopped = "", "", False
            while True:
                item = await queue.get()
                if isinstance(item, str):  # a piece of the answer (else: the end, or an error)
                    if not stopped:
                        text += item
                        safe, stopped = cut_at_stops(text, stops)
                        if len(safe) > len(shown):
                            out.put_nowait(safe[len(shown):])
                            shown = safe
                    continue
                if item is None and not stopped and text != shown:
                    out.put_nowait(text[len(shown):])
                out.put_nowait(item)
                if item is None or isinstance(item, _StreamError):
                    return

        out.pump = asyncio.get_running_loop().create_task(pump())  # (a task nothing refers to may be collected)
        return out, streamer


class PresetRequests:
    """What the chat and completion handlers share: checks that answer 4xx, and the run's preset as the default."""

    served: Served

    def _resolve_model(self, body: dict):
        requested = body.get("model")
        if requested is not None and requested != self.served.name:
            raise error(404, f"The model '{requested}' does not exist: this server serves '{self.served.name}'",
                        "model", "model_not_found")
        return super()._resolve_model(body)

    def check(self, body: dict, prompt_tokens: int) -> None:
        """max_tokens, temperature and stop are valid, and prompt + answer fit the model's context."""
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise error(400, f"{key} must be a positive integer, got {value!r}", key)
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
            raise error(400, f"temperature must be a number in [0, 2], got {temperature!r}", "temperature")
        stop = body.get("stop")
        if stop is not None and not (isinstance(stop, str) or isinstance(stop, list) and len(stop) <= 4
                                     and all(isinstance(s, str) and s for s in stop)):
            raise error(400, f"stop must be a string or a list of up to 4 strings, got {stop!r}", "stop")
        if body.get("stream") and (self.served.model.generation_config.num_beams or 1) > 1:
            raise error(400, f"the model's preset uses num_beams={self.served.model.generation_config.num_beams}, "
                             f"which can't stream: send stream=false, or serve it with num_beams=1", "stream")
        limit = self.served.context
        if limit is None:
            return
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        if prompt_tokens >= limit:
            raise error(400, f"This model's maximum context length is {limit} tokens and the prompt is "
                             f"{prompt_tokens}: shorten it", "messages" if "messages" in body else "prompt",
                        "context_length_exceeded")
        if wanted is not None and prompt_tokens + wanted > limit:
            raise error(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                             f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, {wanted} in the "
                             f"completion): lower max_tokens to at most {limit - prompt_tokens}", "max_tokens",
                        "context_length_exceeded")
        ROOM.set(limit - prompt_tokens)

    def _build_generation_config(self, body: dict, model_generation_config, use_cb: bool = False):
        config = super()._build_generation_config(body, model_generation_config, use_cb=use_cb)
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        config.max_new_tokens = min(wanted or model_generation_config.max_new_tokens, ROOM.get() or 10**9)
        if config.min_new_tokens:
            config.min_new_tokens = min(config.min_new_tokens, config.max_new_tokens)
        if body.get("temperature"):  # the OpenAI API's meaning: a temperature above 0 samples
            config.do_sample = True
        ids, strings = split_stops(self.served.tokenizer, self.stops(body))
        special = set(self.served.tokenizer.all_special_ids)  # skipped when decoding; any other token is text,
        strings += [self.served.tokenizer.decode([i]) for i in ids if i not in special]  # cut from the answer
        ids = [i for i in ids if i in special]
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        config.eos_token_id = list(dict.fromkeys(eos + ids)) or None
        config.stop_strings = strings or None
        return config

    def stops(self, body: dict) -> list[str]:
        stop = body.get("stop") or []
        return [stop] if isinstance(stop, str) else list(stop)


class Chat(PresetRequests, ChatCompletionHandler):
    async def handle_request(self, body: dict, request_id: str):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise error(400, "messages must be a non-empty list of {role, content} messages", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), (str, list)):
                raise error(400, f"messages[{i}] must be {{role: system|user|assistant, content: text}}, got {m!r}",
                            f"messages[{i}]")
        if self.served.tokenizer.chat_template is None:
            raise error(400, f"{self.served.name} is not a chat model (its recipe has no generation.chat_format): "
                             f"use /v1/completions", "messages")
        self._resolve_model(dict(body))  # an unknown model is a 404 before anything else
        texts = [{**m, "content": m["content"] if isinstance(m["content"], str) else
                  " ".join(c.get("text", "") for c in m["content"] if isinstance(c, dict))} for m in messages]
        prompt = self.served.tokenizer.apply_chat_template(texts, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"]
        self.check(body, len(prompt))
        return await super().handle_request(body, request_id)

    def stops(self, body: dict) -> list[str]:
        return (self.served.format.stops() if self.served.format else []) + super().stops(body)


class Completions(PresetRequests, CompletionHandler):
    async def handle_request(self, body: dict, request_id: str):
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise error(400, "prompt must be a non-empty string", "prompt")
        self._resolve_model(dict(body))
        self.check(body, len(self.served.tokenizer(prompt).input_ids))
        return await super().handle_request(body, request_id)


def app(served: Served, continuous_batching: bool = False):
    """transformers' FastAPI app for one run, with the handlers above and OpenAI-shaped errors."""
    models, state = RunModels(served), Generation(continuous_batching=continuous_batching)
    chat, completions = Chat(models, state), Completions(models, state)
    chat.served = completions.served = served
    server = build_server(models, chat, completion_handler=completions, response_handler=ResponseHandler(models, state),
                          transcription_handler=TranscriptionHandler(models, state),
                          systemone_handler=SystemOneHandler(models, state), generation_state=state)

    @server.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return openai_error(400 if exc.status_code == 422 else exc.status_code, exc.detail)

    @server.exception_handler(RequestValidationError)
    async def malformed(request, exc):
        problem = "; ".join(e.get("msg", "") for e in exc.errors())[:300]
        return openai_error(400, {"message": f"the request body must be a JSON object ({problem})"})

    @server.exception_handler(Exception)
    async def crashed(request, exc):
        return openai_error(500, {"message": f"{type(exc).__name__}: {str(exc)[:300]}"})

    return server


def open_served(model_name: str, run: str | None = None, root: str = "runs", overrides: dict | None = None) -> Served:
    path = find_run(model_name, run, root)
    model, tokenizer, recipe = load(path)
    run_name = path.parent.parent.name if path.name == "merged" else path.parent.name
    return Served(f"{model_name}/{run_name}", path, model, tokenizer,
                  {**(recipe.get("generation") or {}), **(overrides or {})})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Serve a trained slm run over the OpenAI API (transformers serve).")
    parser.add_argument("model", help=f"{catalog.choices()} (or a folder under runs/)")
    parser.add_argument("--run", help="run name under runs/<model>/ (default: the newest)")
    parser.add_argument("--root", default="runs", help="runs folder (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--continuous-batching", action="store_true",
                        help="transformers' continuous batching (paged attention; not for slm_gpt / slm_lstm)")
    parser.add_argument("overrides", nargs="*", help="preset key=value (e.g. temperature=0.7 max_new_tokens=64)")
    args = parser.parse_intermixed_args(argv)
    args.run = args.run or os.environ.get("SLM_RUN") or None
    catalog.check(args.model, args.root)
    served = open_served(args.model, args.run, args.root, preset_overrides(args, "serve"))
    import uvicorn

    if args.continuous_batching and not getattr(served.model, "_supports_attention_backend", False):
        print(f"continuous batching: {served.model.config.model_type} is not written for transformers' attention "
              f"interface; serving one request at a time (its export, make export, can batch)", flush=True)
    print(f"serving {served.name} ({served.path}) on http://{args.host}:{args.port}/v1  |  chat: "
          f"{'yes' if served.tokenizer.chat_template else 'no (completions only)'}  |  preset: "
          + json.dumps({k: v for k, v in served.preset.items() if k not in ('prompts', 'chat_format')}), flush=True)
    uvicorn.run(app(served, args.continuous_batching), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
