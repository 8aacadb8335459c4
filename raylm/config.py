"""One root config: YAML recipe + dotted CLI overrides, validated with readable errors.

Each section is owned by the component that reads it (`cluster`, `data`, `model`, `trainer`,
`tracking`, `tuning`, `k8s`); this module only assembles, loads, overrides and saves.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import shutil
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raylm.cluster.config import ClusterConfig, K8sConfig
from raylm.datasets.config import MOVED_DATA_KEYS, DataConfig
from raylm.errors import UserError
from raylm.tasks.objectives import task_objective
from raylm.trainers.config import MOVED_TRAINER_KEYS, ModelConfig, TrackingConfig, TrainerConfig
from raylm.tuning.config import TuningConfig

log = logging.getLogger(__name__)


class RootConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description=ClusterConfig.__doc__)
    data: DataConfig = Field(default_factory=DataConfig, description=DataConfig.__doc__)
    model: ModelConfig = Field(default_factory=ModelConfig, description=ModelConfig.__doc__)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description=TrainerConfig.__doc__)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description=TrackingConfig.__doc__)
    tuning: TuningConfig | None = Field(None, description="Ray Tune sweep run by `raylm tune` (see raylm.tuning).")
    k8s: K8sConfig = Field(default_factory=K8sConfig, description=K8sConfig.__doc__)

    @model_validator(mode="after")
    def _tuning_metric_of_the_task(self) -> RootConfig:
        """A sweep that names no `tuning.metric` optimises the task's own (val_f1 for NER and QA, ...)."""
        if self.tuning is not None and "metric" not in self.tuning.model_fields_set:
            metric, mode = task_objective(self)
            self.tuning.metric = metric
            self.tuning.mode = self.tuning.mode if "mode" in self.tuning.model_fields_set else mode
        return self


# ---------------------------------------------------------------- keys that moved (old configs keep working)

_SAID: set[str] = set()  # moves already reported by this process: one line per moved key


# section -> {old key: its place in the section now}
MOVED_KEYS: dict[str, dict[str, str]] = {"trainer": MOVED_TRAINER_KEYS, "data": MOVED_DATA_KEYS}


def moved_key(key: str, value: Any = None) -> str:
    """The current name of dotted `key`: `trainer.lr` -> `trainer.optimizer.lr`, `data.sharding` ->
    `data.stream.sharding` (reported once)."""
    section, _, name = key.partition(".")
    moves = MOVED_KEYS.get(section, {})
    # `trainer.schedule` was the schedule's type; a mapping there is the new section itself.
    if name not in moves or isinstance(value, dict):
        return key
    new = f"{section}.{moves[name]}"
    if key not in _SAID:
        _SAID.add(key)
        log.warning("%s moved to %s", key, new)
    return new


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with moved keys at their new place: in their section, and as `tuning.space` keys."""
    out = copy.deepcopy(raw)
    conflicts = []
    for section, moves in MOVED_KEYS.items():
        node = out.get(section)
        if isinstance(node, dict):
            conflicts += _move_keys(section, node, moves)
    space = (out.get("tuning") or {}).get("space") if isinstance(out.get("tuning"), dict) else None
    if isinstance(space, dict):
        out["tuning"]["space"] = {moved_key(k): v for k, v in space.items()}
    if conflicts:
        raise UserError(conflicts)
    return out


def _move_keys(section: str, body: dict[str, Any], moves: dict[str, str]) -> list[str]:
    """Move `body`'s old keys in place; the conflicts (old and new both set), one line each."""
    conflicts = []
    old_keys = [k for k in body if k in moves and not isinstance(body[k], dict)]
    # `schedule: cosine` first: its place becomes the section the other schedule keys move into.
    for old in sorted(old_keys, key=lambda k: k != "schedule"):
        value = body.pop(old)
        new = moved_key(f"{section}.{old}", value)
        *parents, leaf = new.split(".")[1:]
        node = body
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if leaf in node:
            conflicts.append(f"{section}.{old} and {new} are both set: keep {new} ({old} is its old name)")
        node[leaf] = value
    return conflicts


def parse_override(item: str) -> tuple[list[str], Any]:
    """`trainer.optimizer.lr=3e-4` -> (["trainer", "optimizer", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"override '{item}': expected section.key=value, e.g. trainer.optimizer.lr=3e-4")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise UserError(f"override '{item}': name a section and a key, e.g. trainer.max_steps=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "3e-4" as a string; numbers written that way are common in overrides.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        parts = moved_key(".".join(parts), value).split(".")
        node = out
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise UserError(f"override '{item}': '{p}' is a value, not a section")
            node = node[p]
        node[parts[-1]] = value
    return out


def _problems(err: ValidationError, origin: str) -> list[str]:
    lines = []
    shown_as = origin if Path(origin).is_file() else "CONFIG"
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            close = _close_key(loc)
            maybe = f"did you mean '{close}'? " if close else ""
            msg = (f"unknown key '{loc}': {maybe}remove it or check the spelling "
                   f"(see `raylm config show {shown_as}` for the keys)")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            msg = f"{loc}: {e['msg']}{shown}"
        lines.append(f"{origin}: {msg}")
    return lines


def validate(raw: dict[str, Any], origin: str = "config") -> RootConfig:
    try:
        raw = migrate(raw)
    except UserError as err:
        raise UserError([f"{origin}: {p}" for p in err.problems]) from None
    try:
        return RootConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_problems(err, origin), hint="fix the file or override as section.key=value") from None


def load_raw(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}", hint="pass a YAML file, e.g. configs/demo.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: the top level must be a mapping of sections (cluster, data, ...)")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RootConfig:
    raw = migrate(load_raw(path)) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, origin=str(path) if path else "config")


def dump_config(cfg: RootConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RootConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_config(cfg))


# ---------------------------------------------------------------- `raylm config show`: keys, values, docs


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model `annotation` is (also through `X | None`), if any."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for c in typing.get_args(annotation) if union else (annotation,):
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _list_model(annotation: Any) -> type[BaseModel] | None:
    """The item model of `list[Model]`, if `annotation` is one."""
    args = typing.get_args(annotation)
    return section_model(args[0]) if typing.get_origin(annotation) is list and args else None


def _all_keys(model: type[BaseModel] = RootConfig, prefix: str = "") -> list[str]:
    """Every dotted key that holds a value (for "did you mean")."""
    keys = []
    for name, f in model.model_fields.items():
        sub = section_model(f.annotation)
        keys += _all_keys(sub, f"{prefix}{name}.") if sub is not None else [f"{prefix}{name}"]
    return keys


def _close_key(key: str) -> str | None:
    """The existing key a misspelt one most likely means: by its dotted path, else by its last part."""
    leaves = [k for k in _all_keys() if k.split(".")[0] == key.split(".")[0]]
    flat = {k.replace(".", "_"): k for k in leaves}
    hit = difflib.get_close_matches(key.replace(".", "_"), flat, n=1, cutoff=0.8)
    if hit:
        return flat[hit[0]]
    last = {k.rsplit(".", 1)[-1]: k for k in leaves}
    hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], last, n=1, cutoff=0.75)
    return last[hit[0]] if hit else None


def _show(value: Any) -> str:
    return value if isinstance(value, str) and value else json.dumps(value)


def describe_config(cfg: RootConfig, width: int | None = None) -> str:
    """The resolved config, section by section: `key = value  (default ...)  description`."""
    width = width or shutil.get_terminal_size((110, 24)).columns
    lines: list[str] = []
    _describe(RootConfig, cfg, "", lines, width)
    return "\n".join(lines).lstrip("\n")


def _describe(model: type[BaseModel], obj: BaseModel, prefix: str, lines: list[str], width: int) -> None:
    values, defaults = obj.model_dump(mode="json"), model.model_construct().model_dump(mode="json")
    sections = []
    for name, f in model.model_fields.items():
        sub, items = section_model(f.annotation), _list_model(f.annotation)
        if sub is not None or items is not None:
            sections.append((name, f, sub, items))
            continue
        if name not in defaults:  # a key without a default (trainer.observers[i].factory)
            note = "(required)"
        else:
            note = "(default)" if values[name] == defaults[name] else f"(default {_show(defaults[name])})"
        _field_line(f"{prefix}{name} = {_show(values[name])}  {note}", f.description or "", lines, width)
    for name, f, sub, items in sections:
        value = getattr(obj, name)
        if items is not None:
            for i, item in enumerate(value):
                lines += ["", f"[{prefix}{name}[{i}]]  {f.description or ''}".rstrip()]
                _describe(items, item, f"{prefix}{name}[{i}].", lines, width)
            continue
        unset = "  (unset; its keys and defaults:)" if value is None else ""
        lines.append("")
        _field_line(f"[{prefix}{name}]{unset}", f.description or "", lines, width)
        _describe(sub, value if value is not None else sub.model_construct(), f"{prefix}{name}.", lines, width)


def _field_line(head: str, doc: str, lines: list[str], width: int) -> None:
    """One line when it fits the terminal; else the description wrapped below, indented."""
    doc = " ".join(doc.split())
    if len(head) + 2 + len(doc) <= width or not doc:
        lines.append(f"{head}  {doc}".rstrip())
        return
    lines.append(head)
    lines += textwrap.wrap(doc, width=max(40, width), initial_indent="    ", subsequent_indent="    ")


# Local paths a run reads; made absolute before they travel to workers (another cwd) and trials (Tune may chdir).
PATH_KEYS = ("data.source", "data.prepared_dir", "data.tokenizer.path", "model.init_from", "trainer.export.dir")


def absolute_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (a dumped config) with its local paths absolute, from the current directory (remote URIs as they are;
    data.source only when it exists: it may be a glob or 'demo')."""
    from raylm.cluster.storage import is_remote

    out = copy.deepcopy(raw)
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and not is_remote(value) and (key != "data.source" or os.path.exists(value)):
            node[leaf] = os.path.abspath(value)
    return out
