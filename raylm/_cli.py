"""Shared CLI plumbing: user errors become one line per problem and exit code 2; the console/log setup."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from raylm.errors import EXIT_USER_ERROR, UserError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """UserError -> its lines on stderr and exit code 2, never a traceback; Ctrl-C -> a resume hint.
    A command is wrapped once: wrapping a wrapped one returns it as it is."""
    if getattr(fn, "__code__", None) is _WRAPPER_CODE:
        return fn
    return _wrap(fn)


def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # transformers' "Loading weights" / "Writing model shards" bars: not on raylm's console (read at import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            for line in err.lines():
                typer.echo(line, file=terminal())
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: run the same command again to resume from the last checkpoint", file=terminal())
            raise typer.Exit(130) from None
        except typer.Exit:  # the command's own exit code (e.g. a job's status): not a failure
            raise
        except Exception as err:
            if _TERMINAL is not None:  # the traceback goes to the log file with the rest of stderr: say where
                typer.echo(f"[raylm] failed: {type(err).__name__}: {err} (traceback: {_LOG_FILE})", file=terminal())
            raise

    return wrapper


_WRAPPER_CODE = _wrap(lambda: None).__code__  # what every user_errors wrapper runs


# ---------------------------------------------------------------- console and log file

VERBOSE_ENV = "RAYLM_VERBOSE"  # set by setup_logging: the Ray init and the Train run read it
# Libraries whose INFO lines are chatter on a console (they are kept in the log file).
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "transformers", "filelock", "urllib3")
# Quiet workers: Ray Data's own logger level, and transformers' warnings (e.g. `loss_type=None`).
# Set in the workers' runtime_env only: the driver keeps these messages in its log file.
QUIET_WORKER_ENV = {"RAY_DATA_LOG_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error"}


def command_started() -> float:
    """When this command's process started (time.time() scale): start-up is measured from here."""
    import psutil

    return psutil.Process().create_time()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


class _ConsoleFilter(logging.Filter):
    """Quiet console: raylm's own lines, and anything at ERROR or above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "raylm" or record.levelno >= logging.ERROR


_TERMINAL: Any = None  # the terminal's stderr once the process's own stderr goes to the log file
_LOG_FILE: str | None = None


def terminal() -> Any:
    """Where raylm's error lines go: the terminal, also when stderr was captured into the log file."""
    return _TERMINAL or sys.stderr


def capture_stderr(log_file: str) -> None:
    """Quiet console: the process's stderr (file descriptor 2) goes to the log file. That is where
    Ray's C++ and Python warnings, the worker stderr lines Ray forwards (Ray Train's INFO, tqdm bars,
    transformers' warnings) and library tracebacks land; raylm's lines (stdout) and errors (the saved
    terminal) still reach the terminal. Not done for in-process callers whose stderr is no file."""
    global _TERMINAL, _LOG_FILE
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        return
    if _TERMINAL is None:
        _TERMINAL = os.fdopen(os.dup(fd), "w", buffering=1)
    sys.stderr.flush()
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, fd)
    os.close(log)
    _LOG_FILE = log_file


def setup_logging(verbose_flag: bool = False, log_file: str | None = None) -> None:
    """The one CLI logging setup. Console: raylm's progress, eval and summary lines (everything
    with --verbose); the log file: everything, Ray's and transformers' INFO included."""
    os.environ[VERBOSE_ENV] = "1" if verbose_flag else "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in [h for h in root.handlers if getattr(h, "_raylm", False)]:
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(_Formatter())
    console.setLevel(logging.INFO)
    if not verbose_flag:
        console.addFilter(_ConsoleFilter())
    _add(root, console)
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _add(root, handler)
        logging.getLogger("raylm").info("log: %s (Ray and library messages%s)", log_file,
                                        "" if verbose_flag else "; --verbose shows them here")
        if not verbose_flag:
            capture_stderr(log_file)
    route_library_logs()


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    handler._raylm = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def route_library_logs() -> None:
    """Library loggers that print on their own (Ray, Ray Data, Ray Train, transformers) go
    through the root handlers instead: the console filter and the log file. Call again after
    importing ray.data or transformers: each configures its logger on import."""
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.enable_propagation()
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lib.removeHandler(h)  # Ray's session-dir file handlers stay
        if lib.level == logging.NOTSET or lib.level > logging.INFO:
            lib.setLevel(logging.INFO)
        lib.propagate = True


class _Formatter(logging.Formatter):
    """`[raylm] message` for raylm's lines; other libraries' lines (--verbose, errors) say whose."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] == "raylm":
            return f"[raylm] {record.getMessage()}"
        return f"[{record.name} {record.levelname}] {record.getMessage()}"
