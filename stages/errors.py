"""How a stage fails: library code raises a StageError whose message is the report; only `main()` exits.

One convention for every command under stages/: `run(main, "prepare")` calls it, prints a StageError as
`prepare: <message>` on stderr and exits 1, and exits with main's return code otherwise. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class StageError(Exception):
    """A failure the user can act on; its message says what and how."""


def run(main: Callable[[], int | None], name: str) -> NoReturn:
    try:
        code = main()
    except StageError as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
