"""The command line every stage script shares: `[recipe.yaml] [key=value ...] [--publish-log PATH] [--debug]`."""
from __future__ import annotations

import argparse

from .recipe import Recipe, load_recipe


def parse(argv: list[str], default_recipe: str, description: str,
          stage: type | None = None) -> tuple[Recipe, argparse.Namespace]:
    """`stage`: the dataclass that checks the recipe's `stage:` section (for stages that are not trainers)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("recipe", nargs="?", default=default_recipe, help=f"recipe YAML (default: {default_recipe})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.num_train_epochs=1")
    parser.add_argument("--publish-log", default=None, metavar="PATH",
                        help="also copy the run's log (+ its plot) there (the make targets use the model folder)")
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)  # first positional was an override, not a recipe
        args.recipe = default_recipe
    return load_recipe(args.recipe, args.overrides, stage=stage), args
