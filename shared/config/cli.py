"""The command line every stage script shares: `[recipe.yaml] [key=value ...] [--publish-log PATH] [--debug]`."""
from __future__ import annotations

import argparse

from shared.config.files import display_path
from shared.config.recipe import Recipe, load_recipe


def parse(argv: list[str], default_recipe: str, description: str,
          stage: type | None = None) -> tuple[Recipe, argparse.Namespace]:
    """`stage`: the dataclass that checks the recipe's `stage:` section (for stages that are not trainers)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("recipe", nargs="?", default=default_recipe, help=f"recipe YAML (default: {default_recipe})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. training.num_train_epochs=1")
    parser.add_argument("--publish-log", default=None, metavar="PATH",
                        help="also copy the run's log (+ its plot) there (the make targets use the model folder); "
                             "only a run without overrides does: it is the reference run that log documents")
    parser.add_argument("--publish-anyway", action="store_true",
                        help="publish even a run with overrides (make: PUBLISH=yes)")
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)  # first positional was an override, not a recipe
        args.recipe = default_recipe
    recipe = load_recipe(args.recipe, args.overrides, stage=stage)
    if args.publish_log and args.overrides and not args.publish_anyway:
        # an experiment must not replace the committed reference log with a description of itself
        print(f"not publishing {args.publish_log}: this run has overrides ({' '.join(args.overrides)}), so its log "
              f"stays in {display_path(recipe.run_dir / 'final')}/ (PUBLISH=yes publishes it anyway)", flush=True)
        args.publish_log = None
    return recipe, args
