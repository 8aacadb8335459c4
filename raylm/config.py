"""One root config: YAML recipe + dotted CLI overrides, validated with readable errors.

Each section is owned by the component that reads it (`cluster`, `data`, `model`, `trainer`,
`tracking`, `tuning`, `k8s`); this module only assembles, loads, overrides and saves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raylm.cluster.config import ClusterConfig, K8sConfig
from raylm.datasets.config import DataConfig
from raylm.errors import UserError
from raylm.trainers.config import ModelConfig, TrackingConfig, TrainerConfig
from raylm.tuning.config import TuningConfig


class RootConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tuning: TuningConfig | None = Field(None, description="Ray Tune sweep (see raylm.tuning).")
    k8s: K8sConfig = Field(default_factory=K8sConfig)

    @model_validator(mode="after")
    def _tuning_metric_of_the_task(self) -> RootConfig:
        """A sweep that names no `tuning.metric` optimises the task's own (val_f1 for NER and QA, ...)."""
        if self.tuning is not None and "metric" not in self.tuning.model_fields_set:
            from raylm.trainers.tasks import get_task

            task = get_task(self.trainer.task)
            self.tuning.metric = task.metric
            self.tuning.mode = self.tuning.mode if "mode" in self.tuning.model_fields_set else task.mode
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """`trainer.lr=3e-4` -> (["trainer", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"override '{item}': expected section.key=value, e.g. trainer.lr=3e-4")
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
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc}': remove it or check the spelling (see configs/ for the valid keys)"
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            msg = f"{loc}: {e['msg']}{shown}"
        lines.append(f"{origin}: {msg}")
    return lines


def validate(raw: dict[str, Any], origin: str = "config") -> RootConfig:
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
    raw = load_raw(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, origin=str(path) if path else "config")


def dump_config(cfg: RootConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RootConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_config(cfg))
