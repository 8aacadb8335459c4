"""The command line's one table: every command registered once, wrapped by user_errors once, the shared
options with one meaning each, old spellings working with a notice, and `raylm --help` without torch or Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperGroup
from typer.testing import CliRunner

from raylm import cli_options
from raylm._cli import _WRAPPER_CODE, user_errors
from raylm.cli import COMMANDS, app
from raylm.cli_options import CONFIG_HELP, JOBS_ADDRESS, OVERRIDES, RAY_ADDRESS, VERBOSE, Group, load
from raylm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
EVERY_COMMAND = {
    "run", "prepare", "train", "tune", "eval", "predict", "generate", "export", "report", "rejects", "submit",
    "tokenizer train", "config show", "jobs list", "jobs status", "jobs logs", "jobs stop",
    "k8s render", "k8s validate", "k8s apply",
}
RAY_COMMANDS = {"run", "prepare", "train", "tune", "tokenizer train"}  # --address: the Ray cluster to join
JOBS_COMMANDS = {"submit", "jobs list", "jobs status", "jobs logs", "jobs stop"}  # --jobs-address: the Jobs API
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


def commands(group: TyperGroup, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, TyperGroup):
            yield from commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def registered(typer_app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, Callable[..., Any]]]:
    for info in typer_app.registered_commands:
        yield f"{prefix}{info.name}", info.callback
    for group in typer_app.registered_groups:
        yield from registered(group.typer_instance, f"{prefix}{group.name} ")


def times_wrapped(fn: Callable[..., Any]) -> int:
    n = 0
    while fn is not None:
        n += getattr(fn, "__code__", None) is _WRAPPER_CODE
        fn = getattr(fn, "__wrapped__", None)
    return n


def options(cmd: Any, flag: str) -> list[Any]:
    return [p for p in cmd.params if flag in p.opts]


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_options, "_SAID", set())
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def test_every_command_is_registered_once_from_the_table_and_wrapped_once() -> None:
    rows = list(registered(app))
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(EVERY_COMMAND)  # each once, none lost
    fns = [fn for _, fn in rows]
    assert len({id(fn) for fn in fns}) == len(fns)  # no function under two names
    table = [fn for entry in COMMANDS.values() for fn in (entry.commands.values() if isinstance(entry, Group)
                                                          else [entry])]
    assert {id(fn) for fn in table} == {id(fn) for fn in fns}
    assert {name: times_wrapped(fn) for name, fn in rows} == dict.fromkeys(names, 1)
    assert user_errors(fns[0]) is fns[0]  # wrapping again changes nothing


def test_the_cluster_sub_apps_kept_for_old_imports_are_the_table_rows() -> None:
    from raylm.cluster.cli import jobs_app, k8s_app

    for name, sub in (("jobs", jobs_app), ("k8s", k8s_app)):
        assert {n: fn for n, fn in registered(sub)} == COMMANDS[name].commands


def test_shared_options_have_one_meaning() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    every = dict(commands(root))
    assert set(every) == EVERY_COMMAND
    for name, cmd in every.items():
        address = options(cmd, "--address")
        if name in RAY_COMMANDS:
            assert [(p.help, p.hidden) for p in address] == [(RAY_ADDRESS.help, False)], name
        elif name in JOBS_COMMANDS:  # the old spelling, hidden, beside the new one
            assert [p.hidden for p in address] == [True], name
            assert [p.help for p in options(cmd, "--jobs-address")] == [JOBS_ADDRESS.help], name
        else:
            assert not address and not options(cmd, "--jobs-address"), name
        for p in options(cmd, "--verbose"):
            assert (p.help, p.opts) == (VERBOSE.help, ["--verbose", "-v"]), name
        assert bool(options(cmd, "--verbose")) == (name in RAY_COMMANDS), name
        by_name = {p.name: p for p in cmd.params if isinstance(p, TyperArgument)}
        if "overrides" in by_name:
            assert getattr(by_name["overrides"], "help", None) == OVERRIDES.help, name
        if "config" in by_name and name != "config show":  # config show's CONFIG may be left out
            assert getattr(by_name["config"], "help", None) == CONFIG_HELP, name


@pytest.mark.parametrize("path", sorted(EVERY_COMMAND))
def test_every_command_has_help(path: str) -> None:
    res = CliRunner().invoke(app, [*path.split(), "--help"])
    assert res.exit_code == 0, res.output


def test_old_address_of_the_jobs_api_works_with_a_notice() -> None:
    res = CliRunner().invoke(app, ["jobs", "list", "--address", UNREACHABLE])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("notice: --address for the Jobs API is now --jobs-address") == 1
    assert f"cannot reach the Ray Jobs API at {UNREACHABLE}" in res.stderr
    assert "Traceback" not in res.output


def test_jobs_address_flag_and_environment() -> None:
    res = CliRunner().invoke(app, ["jobs", "stop", "raylm-x", "--jobs-address", UNREACHABLE])
    assert res.exit_code == 2 and f"cannot reach the Ray Jobs API at {UNREACHABLE}" in res.stderr
    assert "notice" not in res.stderr
    res = CliRunner().invoke(app, ["jobs", "list"], env={"RAY_API_SERVER_ADDRESS": UNREACHABLE})
    assert res.exit_code == 2 and f"cannot reach the Ray Jobs API at {UNREACHABLE}" in res.stderr


def test_jobs_address_is_not_overridden_by_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray's JobSubmissionClient takes RAY_ADDRESS over the address it is passed: the flag must still win.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8")
    res = CliRunner().invoke(app, ["jobs", "list", "--jobs-address", UNREACHABLE])
    assert res.exit_code == 2
    assert f"Failed to connect to Ray at address: {UNREACHABLE}" in res.stderr, res.stderr
    assert "RAY_API_SERVER_ADDRESS" not in os.environ  # set for the command only


def test_both_spellings_that_disagree_are_a_user_error() -> None:
    res = CliRunner().invoke(app, ["submit", DEMO, "--jobs-address", UNREACHABLE, "--address", "http://127.0.0.1:8"])
    assert res.exit_code == 2
    assert f"error: --jobs-address {UNREACHABLE} and --address http://127.0.0.1:8 disagree" in res.stderr


def test_export_old_out_is_output_with_a_notice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple] = []
    fake = types.ModuleType("raylm.serving.export")
    fake.main = lambda *a: calls.append(a) or {"checkpoint": "c", "export_dir": a[3]}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "raylm.serving.export", fake)
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", "old"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("notice: --out of raylm export is now --output") == 1
    res = CliRunner().invoke(app, ["export", str(tmp_path), "-o", "new"])
    assert res.exit_code == 0 and "notice" not in res.stderr
    assert [c[3] for c in calls] == ["old", "new"]


def test_the_loader_runs_the_commands_preflight() -> None:
    bad = ["data.source=/nonexistent/corpus/*.txt"]
    for command in ("prepare", "train", "run", "tune", "tokenizer"):
        with pytest.raises(UserError, match="no files match"):
            load(DEMO, bad, command)
    with pytest.raises(UserError, match="no files match"):  # the fast checks run before Ray starts
        load(DEMO, bad, "train", overlap=True)
    assert load(DEMO, bad, "rejects").data.source == "/nonexistent/corpus/*.txt"  # no inputs read here
    seen = []
    assert load(None, None, "tune", check=seen.append).trainer == seen[0].trainer  # the command's own check


def test_a_commands_exit_code_is_not_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    def cmd() -> None:
        raise typer.Exit(3)

    with pytest.raises(typer.Exit):
        user_errors(cmd)()
    assert "failed" not in capsys.readouterr().err


def test_the_command_line_imports_no_torch_ray_or_transformers() -> None:
    code = "import sys, raylm.cli; print(sorted({'torch', 'ray', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
