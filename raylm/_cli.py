"""Shared CLI plumbing: user errors become one line per problem and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from raylm.errors import EXIT_USER_ERROR, UserError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """UserError -> its lines on stderr and exit code 2, never a traceback; Ctrl-C -> a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            for line in err.lines():
                typer.echo(line, err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: run the same command again to resume from the last checkpoint", err=True)
            raise typer.Exit(130) from None

    return wrapper
