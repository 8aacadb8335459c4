"""Search space: YAML specs over dotted config keys -> validated Ray Tune domains.

Trials see their sample as `{"train_loop_config": {"trainer.optimizer.lr": 0.001, ...}}` (the Train V2
pattern, `Tuner(driver_fn, param_space={"train_loop_config": ...})`); the driver applies those
dotted keys on top of the base config.
"""

from __future__ import annotations

import copy
import math
import typing
from typing import Any

from pydantic import BaseModel

from raylm.config import RootConfig, moved_key, section_model, validate
from raylm.errors import UserError
from raylm.tuning.config import ParamSpec, TuningConfig

LOOP_KEY = "train_loop_config"
# Sections a trial may not change: where Ray runs, and the sweep itself.
_FORBIDDEN_SECTIONS = ("cluster", "tuning", "k8s")


def _field_annotation(key: str) -> tuple[Any, str | None]:
    """The annotation of dotted `key` in RootConfig, or (None, why it does not exist)."""
    model: type[BaseModel] | None = RootConfig
    annotation: Any = None
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            where = ".".join(parts[:i]) or "the root config"
            return None, f"'{part}' is not a key of {where}"
        annotation = model.model_fields[part].annotation
        model = section_model(annotation)
    if model is not None:
        return None, f"'{key}' is a section, not a value: name one of its keys"
    return annotation, None


def _is_int_field(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return int in args and float not in args


def _spec_problems(key: str, spec: ParamSpec) -> list[str]:
    """Shape problems of one spec (bounds, values), independent of the base config."""
    where = f"tuning.space.{key}"
    if spec.type in ("choice", "grid"):
        return [] if spec.values else [f"{where}: {spec.type} needs a non-empty 'values' list"]
    if spec.low is None or spec.high is None:
        return [f"{where}: {spec.type} needs both 'low' and 'high'"]
    out = []
    if spec.low >= spec.high:
        out.append(f"{where}: low ({spec.low:g}) must be below high ({spec.high:g})")
    if spec.type == "loguniform" and (spec.low <= 0 or spec.high <= 0):
        out.append(f"{where}: loguniform bounds must be positive (got low={spec.low:g}, high={spec.high:g})")
    if spec.type == "randint" and not (float(spec.low).is_integer() and float(spec.high).is_integer()):
        out.append(f"{where}: randint bounds must be integers")
    return out


def _candidates(spec: ParamSpec) -> list[Any]:
    """Values to try against the base config: every listed value, or both bounds."""
    if spec.type in ("choice", "grid"):
        return list(spec.values or [])
    if spec.type == "randint":
        return [int(spec.low), int(spec.high) - 1]  # type: ignore[arg-type]
    return [spec.low, spec.high]


def _value_problem(base_raw: dict[str, Any], key: str, value: Any) -> str | None:
    """Why `key=value` on top of the base config does not validate, or None."""
    raw = apply_dotted(base_raw, {key: value})
    try:
        validate(raw, origin="trial")
    except UserError as err:
        return "; ".join(p.removeprefix("trial: ") for p in err.problems)
    return None


def apply_dotted(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set typed values at dotted keys (apply_overrides parses strings; these are already typed).
    A key that moved (`trainer.lr`, e.g. in an older sweep's results) is set at its new place."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        parts = moved_key(key, value).split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def space_problems(tuning: TuningConfig, base_raw: dict[str, Any]) -> list[str]:
    """One line per problem in the search space; empty when it is valid."""
    if not tuning.space:
        return ["tuning.space: empty; name at least one key, e.g. trainer.optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}"]
    out: list[str] = []
    for key, spec in tuning.space.items():
        where = f"tuning.space.{key}"
        if key.split(".")[0] in _FORBIDDEN_SECTIONS:
            out.append(f"{where}: the '{key.split('.')[0]}' section cannot be tuned")
            continue
        annotation, why = _field_annotation(key)
        if why:
            out.append(f"{where}: unknown key ({why})")
            continue
        shape = _spec_problems(key, spec)
        out.extend(shape)
        if shape:
            continue
        if spec.type in ("uniform", "loguniform") and _is_int_field(annotation):
            out.append(f"{where}: '{key}' is an integer; use randint (or choice) instead of {spec.type}")
            continue
        for value in _candidates(spec):
            problem = _value_problem(base_raw, key, value)
            if problem:
                out.append(f"{where}: value {value!r} is not valid: {problem}")
                break
    return out + _searcher_problems(tuning)


def _searcher_problems(tuning: TuningConfig) -> list[str]:
    grid = [k for k, s in tuning.space.items() if s.type == "grid"]
    if grid and tuning.searcher.type != "random":
        return [
            f"tuning.space.{k}: grid is only supported by the random searcher "
            f"(not {tuning.searcher.type}); use choice" for k in grid
        ]
    return []


def check_space(tuning: TuningConfig, base_raw: dict[str, Any]) -> None:
    problems = space_problems(tuning, base_raw)
    if problems:
        raise UserError(problems, hint="see configs/tune-*.yaml for a valid search space")


def to_domain(spec: ParamSpec) -> Any:
    """A Ray Tune domain (or grid_search marker) for one spec."""
    from ray import tune

    if spec.type == "uniform":
        return tune.uniform(spec.low, spec.high)
    if spec.type == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    if spec.type == "randint":
        return tune.randint(int(spec.low), int(spec.high))  # type: ignore[arg-type]
    if spec.type == "choice":
        return tune.choice(list(spec.values or []))
    return tune.grid_search(list(spec.values or []))


def param_space(tuning: TuningConfig) -> dict[str, Any]:
    """`{"train_loop_config": {dotted key: domain}}`: what Tuner(driver_fn, param_space=...) takes."""
    return {LOOP_KEY: {key: to_domain(spec) for key, spec in tuning.space.items()}}


def pbt_mutations(tuning: TuningConfig) -> dict[str, Any]:
    """PBT explore: continuous keys are perturbed from their domain, lists resampled."""
    muts: dict[str, Any] = {}
    for key, spec in tuning.space.items():
        muts[key] = list(spec.values or []) if spec.type in ("choice", "grid") else to_domain(spec)
    return {LOOP_KEY: muts}


def overrides_of(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a trial config (`{"train_loop_config": {...}}` -> `{...}`)."""
    return dict(config.get(LOOP_KEY) or {})


def format_value(value: Any) -> str:
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.4g}"
    return str(value)
