"""A strict walker over a CRD's openAPIV3Schema, and CRD loading.

Strict like `kubectl apply --validate=strict`: a field the schema does not know is an error (the
API server would silently prune it, so a typo like `shutdownAfterJobFinish` would just vanish).
Only the keywords the KubeRay CRDs use are implemented; CEL rules (x-kubernetes-validations) are
not evaluated. `with_defaults` does what the API server does before it validates: it fills in the
schema's defaults, so a required field the CRD defaults (workerGroupSpecs[].minReplicas) is not
reported missing.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from raylm.errors import UserError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
CRD_NAMES = ("rayjobs.ray.io", "rayclusters.ray.io")

# (apiVersion, kind) -> openAPIV3Schema
Schemas = dict[tuple[str, str], dict[str, Any]]


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return {dict: "object", list: "array"}.get(type(v), type(v).__name__)


def _type_ok(v: Any, t: str) -> bool:
    return {
        "object": isinstance(v, dict),
        "array": isinstance(v, list),
        "string": isinstance(v, str),
        "boolean": isinstance(v, bool),
        "integer": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, (int, float)) and not isinstance(v, bool),
    }.get(t, True)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with the schema's `default`s filled in where a field is absent.

    As the API server does (CRD structural schemas, "Defaulting and Nullable"): a null field the
    schema does not mark nullable is pruned first, then defaulted like an absent one.
    """
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(v, schema["items"]) for v in value]
    if not isinstance(value, dict):
        return value
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    out = {}
    for k, v in value.items():
        sub = props.get(k, extra if isinstance(extra, dict) else None)
        if sub is None:
            out[k] = v
        elif v is not None or sub.get("nullable") or k not in props:
            out[k] = with_defaults(v, sub)
    for k, sub in props.items():
        if k not in out and "default" in sub:
            out[k] = with_defaults(copy.deepcopy(sub["default"]), sub)
    return out


def check(value: Any, schema: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """[(field path, what is wrong)] for `value` against `schema`."""
    if value is None:
        return [] if schema.get("nullable") else [(path, "is null: give a value or remove the field")]
    if schema.get("x-kubernetes-int-or-string"):
        if _type_name(value) not in ("integer", "string"):
            return [(path, f"expected an integer or a string, got {_type_name(value)}")]
        return _scalar(value, schema, path) if isinstance(value, str) else []
    t = schema.get("type")
    if t and not _type_ok(value, t):
        return [(path, f"expected {'an' if t[0] in 'aeiou' else 'a'} {t}, got {_type_name(value)} {value!r:.40}")]
    if isinstance(value, dict):
        return _object(value, schema, path)
    if isinstance(value, list):
        return _array(value, schema, path)
    return _scalar(value, schema, path)


def _object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[tuple[str, str]]:
    out = [(_join(path, k), "required field is missing") for k in schema.get("required", []) if k not in value]
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for k, v in value.items():
        if props is not None and k in props:
            out += check(v, props[k], _join(path, k))
        elif isinstance(extra, dict):
            out += check(v, extra, _join(path, k))
        elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            near = difflib.get_close_matches(k, list(props), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            out.append((_join(path, k), f"unknown field{hint}"))
    return out


def _array(value: list[Any], schema: dict[str, Any], path: str) -> list[tuple[str, str]]:
    out = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append((path, f"needs at least {schema['minItems']} item(s)"))
    items = schema.get("items")
    if isinstance(items, dict):
        for i, v in enumerate(value):
            out += check(v, items, f"{path}[{i}]")
    return out


def _scalar(value: Any, schema: dict[str, Any], path: str) -> list[tuple[str, str]]:
    if "enum" in schema and value not in schema["enum"]:
        return [(path, f"{value!r} is not one of {schema['enum']}")]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return [(path, f"{value!r} does not match the pattern {schema['pattern']}")]
        if len(value) > schema.get("maxLength", len(value)):
            return [(path, f"longer than {schema['maxLength']} characters")]
        if len(value) < schema.get("minLength", 0):
            return [(path, f"shorter than {schema['minLength']} characters")]
    if isinstance(value, int) and not isinstance(value, bool):
        lo, hi = {"int32": _INT32, "int64": _INT64}.get(schema.get("format", ""), (None, None))
        if lo is not None and not lo <= value <= hi:
            return [(path, f"{value} does not fit in {schema['format']}")]
        if "minimum" in schema and value < schema["minimum"]:
            return [(path, f"{value} is below the minimum {schema['minimum']}")]
    return []


# --- CRDs -------------------------------------------------------------------------------------


def schemas_from_docs(docs: list[Any]) -> Schemas:
    out: Schemas = {}
    for d in docs:
        if not isinstance(d, dict):
            continue
        items = d.get("items") if d.get("kind") == "List" else [d]
        for crd in items or []:
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for v in spec.get("versions", []):
                schema = (v.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = schema
    return out


@lru_cache(maxsize=4)
def _from_dir(path: str) -> Schemas:
    docs: list[Any] = []
    for f in sorted(Path(path).glob("*.y*ml")):
        docs += list(yaml.load_all(f.read_text(), Loader=_Loader))
    return schemas_from_docs(docs)


def _from_kubectl() -> Schemas | None:
    kubectl = os.environ.get("RAYLM_KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        return None
    try:
        res = subprocess.run(
            [kubectl, "get", "crd", *CRD_NAMES, "-o", "yaml"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return schemas_from_docs([yaml.load(res.stdout, Loader=_Loader)]) or None


def load_crds(crds_dir: str | Path | None = None) -> Schemas:
    """CRD schemas from `crds_dir`, else $RAYLM_KUBERAY_CRDS, else the cluster through kubectl."""
    where = crds_dir or os.environ.get("RAYLM_KUBERAY_CRDS")
    if where:
        if not Path(where).is_dir():
            raise UserError(f"KubeRay CRD folder not found: {where}")
        schemas = _from_dir(str(Path(where).resolve()))
        if not schemas:
            raise UserError(f"{where}: no CustomResourceDefinition with an openAPIV3Schema in *.yaml")
        return schemas
    schemas = _from_kubectl()
    if schemas is None:
        raise UserError(
            "no KubeRay CRD schemas: pass --crds DIR (the files of kuberay's "
            "ray-operator/config/crd/bases), set RAYLM_KUBERAY_CRDS, or point kubectl at a "
            "cluster with the KubeRay operator installed"
        )
    return schemas
