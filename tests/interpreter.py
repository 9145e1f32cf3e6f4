"""A workaround for one interpreter bug, in the test harness only.

CPython 3.11.7 can raise a spurious ``SystemError: AST constructor recursion depth mismatch``
from ``ast.parse`` (cpython gh-106905, fixed in 3.11.8): seen here when hypothesis describes a
strategy's lambdas, or pytest rewrites a module, from deep inside a run. The parse itself is
pure, so on that one error it is simply done again; any other error, or the same one twice,
is raised as it was."""

from __future__ import annotations

import ast
import sys
from typing import Any

MISMATCH = "AST constructor recursion depth mismatch"
_parse = ast.parse


def parse_again_on_the_spurious_mismatch(*args: Any, **kwargs: Any) -> Any:
    try:
        return _parse(*args, **kwargs)
    except SystemError as exc:
        if MISMATCH not in str(exc):
            raise
        return _parse(*args, **kwargs)


def install() -> None:
    if sys.version_info[:3] < (3, 11, 8) and sys.version_info[:2] == (3, 11):
        ast.parse = parse_again_on_the_spurious_mismatch
