"""Named points where a test can kill a registry operation, to prove that it recovers.

`FAST_MLOPS_CRASH_AT=<point>` makes the process SIGKILL itself on reaching that point: no cleanup, no
`finally`, exactly what a `kill -9` or a lost runner does. Unset (always, outside the tests), the call
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_AT = "FAST_MLOPS_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
