"""A benchmark whose reference side needs the `bench` extra says so in one line (exit 2), not a traceback."""

from __future__ import annotations

import importlib.util
import sys


def require(*modules: str, extra: str = "bench") -> None:
    """Exit 2 naming the missing modules and the install command, when any of `modules` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{sys.argv[0]}: needs {', '.join(missing)} (the reference side): pip install -e '.[{extra}]'",
              file=sys.stderr)
        raise SystemExit(2)
