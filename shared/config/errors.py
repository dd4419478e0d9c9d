"""User errors: one clear line naming the file, line, key or value; exit code 2; `--debug` shows the traceback.

Scripts wrap their `main` with `run_main`, and raise `UserError` for anything the user can fix (a typo in a recipe,
a malformed data file, a missing run). Everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can act on. The message is one line: where (file:line / key) and what is wrong."""


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("SLM_DEBUG", "") not in ("", "0")


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """Call `main(argv)`; turn a UserError into `error: <message>` on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        main(argv)
    except UserError as e:
        if debug:
            raise
        close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        close_progress_bars()
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def close_progress_bars() -> None:
    """A run stopped mid-epoch leaves tqdm's bar open: close it, or `error:` lands at the end of the bar's line."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # never hide the error behind a progress-bar problem
            pass
