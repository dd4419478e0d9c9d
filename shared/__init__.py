"""slm's shared toolkit: recipes, data, tokenizers, training, logs and generation, written once for every model."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["REPO_ROOT"]
