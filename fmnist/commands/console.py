"""Command-line plumbing shared by the read-and-report commands (compare, evaluate, predict)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable


def closed_pipe_is_fine(main: Callable[..., int]) -> Callable[..., int]:
    """`fmnist-compare ... | head` closes stdout early: finish quietly, as Unix tools do, instead
    of a BrokenPipeError traceback. Output that would follow goes to /dev/null."""

    @functools.wraps(main)
    def run(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
            return 0

    return run
