"""The model table: one row per model of this repository, and the one place that lists them.

    python -m shared.config.catalog                  # the table (make help prints it)
    python -m shared.config.catalog generate phi2    # train_phi2/generate.py: the script `make generate` runs
    python -m shared.config.catalog chat phi3        # a model without chat: one line naming the chat models, exit 2

A model's name is what `MODEL=` takes and the folder its runs go to (runs/<name>/). Its folder holds its scripts:
train.py, the generation script (generate.py; MiniGLM's is sample.py, the document's name) and, for the chat
models, chat.py. Each of those scripts is a few lines that call shared/inference with the model's name.

Who reads the table: the Makefile (make help, and the script behind make generate / make chat), the argument help of
shared/inference's generate, chat, webui, serve and export, and bench/compare.py (its architectures live in these
folders). It imports nothing but the standard library, so make can ask it before anything heavy is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared import REPO_ROOT
from shared.config.errors import UserError, run_main


@dataclass(frozen=True)
class Model:
    name: str                   # MODEL=<name>; its runs are runs/<name>/<run>/
    title: str                  # what it is, for make help
    folder: str                 # its scripts
    recipe: str                 # what `make train-<name>` trains
    run: str                    # the run `make generate` / `make chat` are shown with (by default they take the newest)
    chat: bool = False          # trained to chat (a chat format in its recipe): it has chat.py, and `make chat` works
    generate_script: str = "generate.py"

    @property
    def generate(self) -> str:
        return f"{self.folder}/{self.generate_script}"

    @property
    def chat_script(self) -> str | None:
        return f"{self.folder}/chat.py" if self.chat else None


MODELS = {m.name: m for m in [
    Model("phi3", "Phi-3, tiny poetry model", "train_phi3", "recipes/phi3/pretrain.yaml", "poetry"),
    Model("mixtral", "Mixtral MoE, poetry", "train_mixtral", "recipes/mixtral/pretrain.yaml", "poetry"),
    Model("phi2", "Phi-2 Chinese: pretrain, SFT, DPO, RAG", "train_phi2", "recipes/phi2/pretrain.yaml", "sft",
          chat=True),
    Model("nanogpt", "nanoGPT: pretrain, chat finetune", "train_nanogpt", "recipes/nanogpt/pretrain.yaml", "finetune",
          chat=True),
    Model("minigl", "MiniGLM: GPT + LSTM, QA finetune", "minigl", "recipes/minigl/pretrain.yaml", "finetune",
          chat=True, generate_script="sample.py"),
]}


def names(chat_only: bool = False) -> list[str]:
    return [m.name for m in MODELS.values() if m.chat or not chat_only]


def choices(chat_only: bool = False) -> str:
    """The models, for an argument's help: "phi3 | mixtral | ..."."""
    return " | ".join(names(chat_only))


def check(name: str, root: str | Path = "runs") -> None:
    """A model of the table, or a folder under the runs folder (a run trained outside the table, such as the tests'
    tiny ones, serves and exports too); anything else: one line naming the models."""
    base = Path(root).expanduser()
    base = base if base.is_absolute() else REPO_ROOT / base
    if name not in MODELS and not (base / name).is_dir():
        raise UserError(f"unknown model {name!r}; the models: {', '.join(names())} (or a folder under {root}/)")


def script(kind: str, name: str) -> str:
    """The script `make <kind> MODEL=<name>` runs (kind: generate or chat); else one line naming the models that
    have one."""
    if name not in MODELS:
        raise UserError(f"unknown MODEL={name}; the models: {', '.join(names())}")
    model = MODELS[name]
    if kind == "chat" and not model.chat:
        raise UserError(f"MODEL={name} has no chat; the chat models: {', '.join(names(chat_only=True))}")
    return model.chat_script if kind == "chat" else model.generate


def table() -> str:
    """The rows for make help: name, what it is, its folder, the make commands it has, the run they are shown with."""
    lines = ["Models: MODEL=<name> for generate, chat, serve, export (the table: shared/config/catalog.py)"]
    for m in MODELS.values():
        commands = "generate, chat" if m.chat else "generate"
        lines.append(f"  {m.name:<8} {m.title:<40} {m.folder + '/':<15} {commands:<15} e.g. RUN={m.run}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv:
        print(table())
    elif len(argv) == 2 and argv[0] in ("generate", "chat"):
        print(script(*argv))
    else:
        raise UserError(f"usage: python -m shared.config.catalog [generate|chat <model>], got {' '.join(argv)!r}")


if __name__ == "__main__":
    run_main(main)
