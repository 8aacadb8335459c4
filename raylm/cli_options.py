"""What raylm's commands share: each option defined once, with one meaning, and the one config loader.

Two addresses, two names: `--address` is the Ray cluster a command joins (`ray.init`'s address), in `raylm
run/prepare/train/tune/tokenizer train`; `--jobs-address` is a cluster's Jobs API (its dashboard's http address),
in `raylm submit` and `raylm jobs`. The Jobs commands still take their old `--address`, with a notice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple, overload

import typer

from raylm._cli import terminal
from raylm.config import RootConfig, load_config
from raylm.errors import UserError
from raylm.preflight import USES, preflight, preflight_overlapped

CONFIG_HELP = "A YAML recipe, e.g. configs/demo.yaml."
CONFIG = typer.Argument(..., help=CONFIG_HELP, show_default=False)
OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. trainer.max_steps=20 trainer.optimizer.lr=1e-3.",
                           show_default=False)
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Ray's and the libraries' messages on the console too.")
RAY_ADDRESS = typer.Option(None, "--address", help="Ray cluster to join, as ray.init takes it (auto, HOST:6379, "
                           "ray://HOST:10001). Default: the config's cluster.address, else RAY_ADDRESS, else "
                           "an embedded local Ray.")
JOBS_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # what Ray's own `ray job` CLI and JobSubmissionClient read first
JOBS_ADDRESS = typer.Option(None, "--jobs-address", help=f"The cluster's Ray Jobs API (its dashboard), e.g. "
                            f"http://127.0.0.1:8265. Default: {JOBS_ADDRESS_ENV}, else RAY_ADDRESS when it is "
                            "an http(s) URL, else http://127.0.0.1:8265.")
OLD_JOBS_ADDRESS = typer.Option(None, "--address", hidden=True, help="Old spelling of --jobs-address.")
JOB_ID = typer.Argument(..., help="Submission id, e.g. raylm-<trainer.run_name> (see raylm jobs list).",
                        show_default=False)


# ---------------------------------------------------------------- old spellings

_SAID: set[str] = set()  # notices already given by this process: one line each


def notice(text: str) -> None:
    """One line on stderr (the terminal's, also once stderr goes to the log file), once per process."""
    if text not in _SAID:
        _SAID.add(text)
        typer.echo(f"notice: {text}", file=terminal())


def renamed(new: str | None, old: str | None, new_flag: str, old_flag: str, what: str = "") -> str | None:
    """The value of an option that has a new name: the new flag, else the old one with a notice."""
    if old is None:
        return new
    notice(f"{old_flag}{what} is now {new_flag}")
    if new is not None and new != old:
        raise UserError(f"{new_flag} {new} and {old_flag} {old} disagree", hint=f"pass {new_flag} only")
    return old


@contextmanager
def jobs_api(new: str | None, old: str | None) -> Iterator[str | None]:
    """The Jobs API a command talks to: --jobs-address, else the old --address (with a notice), else
    RAY_API_SERVER_ADDRESS; None leaves raylm.cluster.jobs to its RAY_ADDRESS fallback and default.
    While the command runs, an address given here is RAY_API_SERVER_ADDRESS too: Ray's JobSubmissionClient
    takes the environment (RAY_API_SERVER_ADDRESS, else RAY_ADDRESS) over the address it is passed."""
    address = renamed(new, old, "--jobs-address", "--address", " for the Jobs API") or os.environ.get(JOBS_ADDRESS_ENV)
    before = os.environ.get(JOBS_ADDRESS_ENV)
    if address:
        os.environ[JOBS_ADDRESS_ENV] = address
    try:
        yield address or None
    finally:
        if before is None:
            os.environ.pop(JOBS_ADDRESS_ENV, None)
        else:
            os.environ[JOBS_ADDRESS_ENV] = before


# ---------------------------------------------------------------- the config loader


@overload
def load(config: str | None, overrides: list[str] | None, command: str, *, overlap: Literal[False] = False,
         check: Callable[[RootConfig], None] | None = None) -> RootConfig: ...


@overload
def load(config: str | None, overrides: list[str] | None, command: str, *, overlap: Literal[True],
         check: Callable[[RootConfig], None] | None = None) -> tuple[RootConfig, Callable[[], None]]: ...


def load(config: str | None, overrides: list[str] | None, command: str, *, overlap: bool = False,
         check: Callable[[RootConfig], None] | None = None) -> RootConfig | tuple[RootConfig, Callable[[], None]]:
    """The config of `command` (CONFIG + overrides; None: the defaults), its inputs checked as the command
    uses them: `check(cfg)`, else `raylm.preflight` (commands it has no checks for -- their inputs are read
    elsewhere, e.g. on the cluster -- get the config's own validation only). Every problem is one UserError.

    overlap=True returns (config, checked): the slow part of the preflight runs beside Ray's start, and
    `checked()` waits for it (raising its UserError); call it first inside `connect`."""
    cfg = load_config(config, overrides or [])
    if overlap:  # (no command passes its own check with overlap: tune's runs whole, before Ray)
        return cfg, (preflight_overlapped(cfg, command) if command in USES else lambda: None)
    if check is not None:
        check(cfg)
    elif command in USES:
        preflight(cfg, command)
    return cfg


# ---------------------------------------------------------------- building the app from raylm.cli's table


class Group(NamedTuple):
    """A sub-command group: `raylm <name> <command>`."""

    help: str
    commands: dict[str, Callable[..., Any]]


def build(commands: dict[str, Callable[..., Any] | Group], **settings: Any) -> typer.Typer:
    """A typer app of `commands`, groups as sub-apps."""
    app = typer.Typer(no_args_is_help=True, **settings)
    for name, entry in commands.items():
        if isinstance(entry, Group):
            app.add_typer(build(entry.commands, help=entry.help), name=name)
        else:
            app.command(name)(entry)
    return app
