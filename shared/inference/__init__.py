"""Inference: run folder -> model + tokenizer -> decoding preset -> text (generate), the chat REPL (chat), the
Gradio page (webui), the OpenAI-compatible server (serve) and the folders that load without slm (export).
Imports shared.config, shared.data and shared.models, never the Trainer."""
