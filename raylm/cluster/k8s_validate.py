"""Check Kubernetes manifests the way KubeRay v1.7 will take them: errors and warnings.

Errors are what the API server or the KubeRay operator rejects (its Go validation,
ray-operator/controllers/ray/utils/validation.go, and Kubernetes' own pod rules), so the manifest
would certainly fail: unknown fields, wrong types, a missing head group, min > max, a bad name, an
unknown submissionMode. Warnings are raylm's opinions about manifests KubeRay accepts (GPUs
advertised without a limit, no /dev/shm for NCCL, an image whose Ray is not rayVersion);
`raylm k8s validate --strict` fails on them too. Whatever KubeRay accepts never yields an error.

The CRD schema check (`_schema.check`) runs after the schema's defaults are filled in, as the API
server does, and the rules below read the defaulted object: what KubeRay sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from raylm.cluster._schema import Schemas, check, load_crds, with_defaults
from raylm.cluster.k8s_kubectl import kustomize
from raylm.errors import UserError

SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
# kuberay utils/constant.go: MaxRayClusterNameLength, MaxRayJobNameLength (= 53 - 6).
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47}
GENERATED_SUFFIX = 5  # the API server appends 5 random characters to metadata.generateName
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1035_PREFIX = re.compile(r"^[a-z][-a-z0-9]*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RAY_IMAGES = ("rayproject/ray", "rayproject/ray-ml", "anyscale/ray")
_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
FT_ANNOTATION = "ray.io/ft-enabled"
STORAGE_NS_ANNOTATION = "ray.io/external-storage-namespace"


class Finding(NamedTuple):
    path: str
    msg: str
    warning: bool = False


def _err(path: str, msg: str) -> Finding:
    return Finding(path, msg)


def _warn(path: str, msg: str) -> Finding:
    return Finding(path, msg, warning=True)


@dataclass
class Report:
    """One line per finding: 'origin[doc N Kind/name]: field.path: what is wrong'."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __add__(self, other: Report) -> Report:
        return Report(self.errors + other.errors, self.warnings + other.warnings)

    def failing(self, strict: bool = False) -> list[str]:
        """The lines that fail the check: errors, plus warnings when `strict`."""
        return self.errors + (self.warnings if strict else [])


# --- entry points -----------------------------------------------------------------------------


def validate(
    docs: list[Any], crds_dir: str | Path | None = None, origin: str = "<rendered>", schemas: Schemas | None = None
) -> Report:
    """Errors and warnings for `docs` (parsed YAML documents) against the KubeRay CRDs."""
    schemas = schemas if schemas is not None else load_crds(crds_dir)
    report = Report()
    for i, doc in enumerate(docs):
        if doc is None:  # an empty document between two '---'
            continue
        where = f"{origin}[doc {i} {_label(doc)}]"
        for f in _doc_findings(doc, schemas):
            line = f"{where}: {f.path or '(root)'}: {f.msg}"
            (report.warnings if f.warning else report.errors).append(line)
    return report


def validate_path(path: str | Path, schemas: Schemas) -> Report:
    """A manifest file, a raylm config file, a kustomization dir (built), or a dir of those."""
    p = Path(path)
    if p.is_dir():
        if (p / "kustomization.yaml").is_file() or (p / "kustomization.yml").is_file():
            docs = list(yaml.safe_load_all(kustomize(p)))
            return validate(docs, origin=f"{p} (kustomize)", schemas=schemas)
        return sum((validate_path(f, schemas) for f in sorted(p.glob("*.y*ml"))), Report())
    if not p.is_file():
        return Report([f"{p}: no such file or folder"])
    if p.name in ("kustomization.yaml", "kustomization.yml"):
        return validate_path(p.parent, schemas)
    try:
        docs = list(yaml.safe_load_all(p.read_text()))
    except yaml.YAMLError as err:
        return Report([f"{p}: not valid YAML ({getattr(err, 'problem', err)})"])
    if len(docs) == 1 and _is_raylm_config(docs[0]):
        return Report(_config_problems(p))
    return validate(docs, origin=str(p), schemas=schemas)


def validate_paths(paths: list[str | Path], crds_dir: str | Path | None = None) -> Report:
    schemas = load_crds(crds_dir)
    return sum((validate_path(p, schemas) for p in paths), Report())


def _is_raylm_config(doc: Any) -> bool:
    from raylm.config import RootConfig

    return isinstance(doc, dict) and "kind" not in doc and set(doc) <= set(RootConfig.model_fields)


def _config_problems(p: Path) -> list[str]:
    from raylm.config import load_config

    try:
        load_config(p)
    except UserError as err:
        return list(err.problems)
    return []


# --- one document -----------------------------------------------------------------------------


def _label(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return f"{doc.get('kind', '?')}/?" if isinstance(doc, dict) else "?"
    return f"{doc.get('kind', '?')}/{meta.get('name') or meta.get('generateName') or '?'}"


def _doc_findings(doc: Any, schemas: Schemas) -> list[Finding]:
    if not isinstance(doc, dict):
        return [_err("", f"expected a mapping (a Kubernetes object), got {type(doc).__name__}")]
    head = [_err(k, "required field is missing") for k in ("apiVersion", "kind", "metadata") if k not in doc]
    if head:
        return head
    api, kind = doc["apiVersion"], doc["kind"]
    out = _meta_findings(doc["metadata"], kind)
    if str(api).split("/")[0] != "ray.io":
        return out + _core_findings(doc, kind)
    schema = schemas.get((api, kind))
    if schema is None:
        known = ", ".join(f"{a} {k}" for a, k in sorted(schemas)) or "none"
        return out + [_err("apiVersion", f"no CRD schema for {api} {kind} (known: {known})")]
    # ObjectMeta is not in the CRD schema; defaults are filled in before the check, as the API server does.
    body = with_defaults({k: v for k, v in doc.items() if k != "metadata"}, schema)
    out += [_err(p, _explain(p, m)) for p, m in check(body, schema)]
    return out + _ray_rules(kind, body.get("spec"), doc["metadata"])


def _explain(path: str, msg: str) -> str:
    if ".rayStartParams." in path and msg.startswith("expected a string"):
        return msg + " (rayStartParams values are strings: quote it)"
    return msg


def _meta_findings(meta: Any, kind: str) -> list[Finding]:
    if not isinstance(meta, dict):
        return [_err("metadata", f"expected a mapping, got {type(meta).__name__}")]
    name, prefix = meta.get("name"), meta.get("generateName")
    if not name and not prefix:
        return [_err("metadata.name", "required field is missing (or give metadata.generateName)")]
    limit = NAME_LIMITS.get(kind)
    if limit is None:
        return []
    return _name_rule(str(name), kind, limit) if name else _prefix_rule(str(prefix), kind, limit)


def _name_rule(name: str, kind: str, limit: int) -> list[Finding]:
    # KubeRay derives Service and pod names from it: DNS-1035 (lowercase, starts with a letter).
    if not _DNS1035.match(name):
        return [_err("metadata.name", f"'{name}' is not a DNS-1035 label (lowercase letters, digits, '-', "
                     "starting with a letter, at most 63 characters)")]
    if len(name) > limit:
        return [_err("metadata.name", f"'{name}' has {len(name)} characters: KubeRay accepts at most {limit} for a {kind}")]
    return []


def _prefix_rule(prefix: str, kind: str, limit: int) -> list[Finding]:
    # The API server names the object prefix + 5 random [a-z0-9]; KubeRay then checks that name.
    if not _DNS1035_PREFIX.match(prefix):
        return [_err("metadata.generateName", f"'{prefix}' cannot start a DNS-1035 label (lowercase letters, "
                     "digits, '-', starting with a letter)")]
    if len(prefix) + GENERATED_SUFFIX > limit:
        return [_err("metadata.generateName", f"'{prefix}' + {GENERATED_SUFFIX} generated characters exceeds "
                     f"the {limit} KubeRay accepts for a {kind}")]
    return []


def _core_findings(doc: dict[str, Any], kind: str) -> list[Finding]:
    if kind == "ConfigMap":
        data = doc.get("data") or {}
        return [_err(f"data.{k}", "values must be strings") for k, v in data.items() if not isinstance(v, str)]
    return []


# --- RayJob -----------------------------------------------------------------------------------


def _ray_rules(kind: str, spec: Any, meta: dict[str, Any]) -> list[Finding]:
    if not isinstance(spec, dict):
        return []
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    if kind == "RayCluster":
        return _cluster_rules(spec, "spec", annotations)
    if kind != "RayJob":
        return []
    out = _job_rules(spec) + _submitter_rules(spec)
    cluster = spec.get("rayClusterSpec")
    if isinstance(cluster, dict):
        out += _cluster_rules(cluster, "spec.rayClusterSpec", annotations)
    return out


def _job_rules(spec: dict[str, Any]) -> list[Finding]:
    out, mode = [], spec.get("submissionMode")
    if mode not in SUBMISSION_MODES:
        out.append(_err("spec.submissionMode", f"{mode!r} is not one of {list(SUBMISSION_MODES)}"))
    ttl, shutdown = spec.get("ttlSecondsAfterFinished"), spec.get("shutdownAfterJobFinishes")
    if isinstance(ttl, int) and ttl > 0 and not shutdown:
        out.append(_err("spec.ttlSecondsAfterFinished", "KubeRay rejects it without spec.shutdownAfterJobFinishes: true"))
    if spec.get("suspend") and not shutdown:
        out.append(_err("spec.suspend", "KubeRay rejects suspending a RayJob without spec.shutdownAfterJobFinishes: true"))
    selector = spec.get("clusterSelector")
    if spec.get("rayClusterSpec") is None and not selector:
        out.append(_err("spec.rayClusterSpec", "required field is missing (or give spec.clusterSelector)"))
    if selector and not (isinstance(selector, dict) and selector.get("ray.io/cluster")):
        out.append(_err("spec.clusterSelector", "needs the key ray.io/cluster: the name of the RayCluster to use"))
    retries = spec.get("backoffLimit")
    if isinstance(retries, int) and retries > 0 and (mode == "InteractiveMode" or selector):
        why = "InteractiveMode" if mode == "InteractiveMode" else "spec.clusterSelector"
        out.append(_err("spec.backoffLimit", f"KubeRay rejects retries ({retries}) with {why}: set 0"))
    return out


def _submitter_rules(spec: dict[str, Any]) -> list[Finding]:
    mode, template = spec.get("submissionMode"), spec.get("submitterPodTemplate")
    out = []
    if mode == "SidecarMode":
        for key in ("submitterPodTemplate", "submitterConfig"):
            if spec.get(key) is not None:
                out.append(_err(f"spec.{key}", "KubeRay's SidecarMode does not support it: drop it or use K8sJobMode"))
        if spec.get("clusterSelector"):
            out.append(_err("spec.clusterSelector", "KubeRay's SidecarMode cannot use an existing cluster"))
    if mode not in SUBMISSION_MODES or mode == "InteractiveMode" or spec.get("entrypoint"):
        return out
    # KubeRay keeps a submitter container's own command and only fills in
    # `ray job submit ... -- <entrypoint>` when it has none (rayjob_controller getSubmitterTemplate).
    if mode == "K8sJobMode" and _submitter_command(template):
        return out
    custom = " (or give spec.submitterPodTemplate a container with its own command)" if mode == "K8sJobMode" else ""
    return out + [_err("spec.entrypoint", f"required with submissionMode {mode}: the submitter runs "
                       f"`ray job submit -- <entrypoint>`{custom}")]


def _submitter_command(template: Any) -> bool:
    containers = _containers(template)
    return bool(containers) and isinstance(containers[0], dict) and bool(containers[0].get("command"))


def _containers(template: Any) -> list[Any]:
    spec = template.get("spec") if isinstance(template, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    return containers if isinstance(containers, list) else []


# --- RayCluster (also a RayJob's rayClusterSpec) ----------------------------------------------


def _cluster_rules(cluster: dict[str, Any], at: str, annotations: dict[str, Any]) -> list[Finding]:
    out, version = [], cluster.get("rayVersion")
    head = cluster.get("headGroupSpec")
    if isinstance(head, dict):
        out += _group_rules(head, f"{at}.headGroupSpec", version)
    groups = cluster.get("workerGroupSpecs") or []
    policed = cluster.get("networkPolicy") is not None
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        if isinstance(g, dict):
            out += _worker_rules(g, f"{at}.workerGroupSpecs[{i}]", version, policed)
    return out + _gcs_rules(cluster, at, annotations) + _auth_rules(cluster, at)


def _worker_rules(g: dict[str, Any], at: str, ray_version: Any, policed: bool) -> list[Finding]:
    out = []
    lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")
    if all(isinstance(v, int) for v in (lo, hi)):
        if lo < 0 or hi < 0:
            out.append(_err(at, f"minReplicas ({lo}) and maxReplicas ({hi}) must not be negative"))
        elif lo > hi:
            out.append(_err(at, f"minReplicas ({lo}) is above maxReplicas ({hi})"))
        elif isinstance(n, int) and not lo <= n <= hi:
            # KubeRay clamps replicas into [min, max] rather than rejecting the group.
            out.append(_warn(f"{at}.replicas", f"{n} is outside [minReplicas {lo}, maxReplicas {hi}]: "
                             f"KubeRay runs {min(max(n, lo), hi)}"))
    name = g.get("groupName")
    if isinstance(name, str) and not _DNS1123_LABEL.match(name):
        # KubeRay enforces it only with spec.networkPolicy (the name goes into the policy's name).
        rule = _err if policed else _warn
        out.append(rule(f"{at}.groupName", f"'{name}' is not a DNS-1123 label (lowercase letters, digits, '-')"))
    return out + _group_rules(g, at, ray_version)


def _group_rules(g: dict[str, Any], at: str, ray_version: Any) -> list[Finding]:
    containers = _containers(g.get("template"))
    if not containers:
        return [_err(f"{at}.template.spec.containers", "KubeRay needs at least one container (the Ray container first)")]
    params = g.get("rayStartParams") if isinstance(g.get("rayStartParams"), dict) else {}
    out = _param_rules(g, params, at)
    gpu_limited = False
    for j, c in enumerate(containers):
        if isinstance(c, dict):
            gpu_limited = gpu_limited or _gpu_limit(c)
            out += _container_rules(c, f"{at}.template.spec.containers[{j}]", ray_version)
    gpus = params.get("num-gpus")
    if gpus not in (None, "0", 0) and not gpu_limited:
        out.append(_warn(f"{at}.rayStartParams.num-gpus", f"Ray is told of {gpus} GPU(s) but no container has a "
                         "GPU limit: Ray will schedule GPU work on pods without GPUs"))
    return out


def _param_rules(g: dict[str, Any], params: dict[str, Any], at: str) -> list[Finding]:
    out = []
    if g.get("resources") and any(params.get(k) for k in _RESOURCE_PARAMS):
        out.append(_err(f"{at}.resources", f"KubeRay rejects resources both here and in rayStartParams "
                        f"({', '.join(k for k in _RESOURCE_PARAMS if params.get(k))}): use one"))
    if "labels" in params:
        out.append(_err(f"{at}.rayStartParams.labels", "KubeRay rejects it: use the group's `labels` field"))
    return out


def _gpu_limit(c: dict[str, Any]) -> bool:
    limits = _resources(c)[0]
    return any(_is_gpu(k) and str(v) not in ("0", "") for k, v in limits.items())


def _resources(c: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    res = c.get("resources") if isinstance(c.get("resources"), dict) else {}
    limits, requests = res.get("limits"), res.get("requests")
    return (limits if isinstance(limits, dict) else {}), (requests if isinstance(requests, dict) else {})


def _container_rules(c: dict[str, Any], where: str, ray_version: Any) -> list[Finding]:
    limits, requests = _resources(c)
    out = []
    # Kubernetes rejects a pod whose extended-resource (GPU) request has no equal limit.
    for k, v in requests.items():
        if _is_gpu(k) and k not in limits:
            out.append(_err(f"{where}.resources.limits", f"GPUs are requested ({k}: {v}) but not limited: set limits.{k}"))
        elif _is_gpu(k) and str(limits[k]) != str(v):
            out.append(_err(f"{where}.resources", f"{k}: request {v} and limit {limits[k]} differ: Kubernetes needs them equal"))
    mounts = c.get("volumeMounts") if isinstance(c.get("volumeMounts"), list) else []
    if _gpu_limit(c) and not any(isinstance(m, dict) and m.get("mountPath") == "/dev/shm" for m in mounts):
        out.append(_warn(f"{where}.volumeMounts", "no volume at /dev/shm: NCCL gets the container default of 64Mi; "
                         "mount an emptyDir with medium: Memory"))
    return out + _image_rule(c.get("image"), ray_version, f"{where}.image")


def _is_gpu(resource: str) -> bool:
    return resource.endswith("/gpu")


def _image_rule(image: Any, ray_version: Any, at: str) -> list[Finding]:
    if not isinstance(image, str) or not isinstance(ray_version, str) or ":" not in image.rsplit("/", 1)[-1]:
        return []
    repo, tag = image.rsplit(":", 1)
    if repo in _RAY_IMAGES:
        found = re.match(r"(\d+\.\d+\.\d+)", tag)
    else:  # raylm images carry the Ray version as '-ray<version>' in their tag
        found = re.search(r"ray-?(\d+\.\d+\.\d+)", tag)
    if found and found.group(1) != ray_version:
        return [_warn(at, f"image has Ray {found.group(1)} but rayVersion is {ray_version}: make them match")]
    return []


# --- GCS fault tolerance, auth ----------------------------------------------------------------


def _gcs_rules(cluster: dict[str, Any], at: str, annotations: dict[str, Any]) -> list[Finding]:
    head = cluster.get("headGroupSpec") if isinstance(cluster.get("headGroupSpec"), dict) else {}
    containers = _containers(head.get("template"))
    env = _env_names(containers[0]) if containers and isinstance(containers[0], dict) else set()
    params = head.get("rayStartParams") if isinstance(head.get("rayStartParams"), dict) else {}
    env_at, params_at = f"{at}.headGroupSpec.template.spec.containers[0].env", f"{at}.headGroupSpec.rayStartParams"
    out = []
    if "REDIS_USERNAME" in env or params.get("redis-username"):
        out.append(_err(env_at, "KubeRay rejects a Redis username here: use gcsFaultToleranceOptions.redisUsername"))
    opts = cluster.get("gcsFaultToleranceOptions")
    if opts is None:
        if "RAY_REDIS_ADDRESS" in env and str(annotations.get(FT_ANNOTATION, "")).lower() != "true":
            out.append(_err(env_at, "RAY_REDIS_ADDRESS turns GCS fault tolerance on: KubeRay rejects it without "
                            f"{at}.gcsFaultToleranceOptions"))
        return out
    if FT_ANNOTATION in annotations or STORAGE_NS_ANNOTATION in annotations:
        out.append(_err("metadata.annotations", f"KubeRay rejects {FT_ANNOTATION} / {STORAGE_NS_ANNOTATION} "
                        "together with gcsFaultToleranceOptions: use only the options"))
    for name in sorted(env & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}):
        out.append(_err(env_at, f"{name}: KubeRay sets it from gcsFaultToleranceOptions and rejects your own"))
    if params.get("redis-password"):
        out.append(_err(f"{params_at}.redis-password", "KubeRay rejects it with gcsFaultToleranceOptions: use redisPassword"))
    if isinstance(opts, dict):
        out += _gcs_backend_rules(opts, f"{at}.gcsFaultToleranceOptions")
    return out


def _gcs_backend_rules(opts: dict[str, Any], at: str) -> list[Finding]:
    if opts.get("backend", "redis") == "redis":
        if opts.get("storage") is not None:
            return [_err(f"{at}.storage", "only for backend rocksdb: KubeRay rejects it with redis")]
        if not opts.get("redisAddress"):
            return [_warn(f"{at}.redisAddress", "not set: the GCS has no Redis to keep its state in")]
        return []
    redis_only = [k for k in ("redisAddress", "redisUsername", "redisPassword", "externalStorageNamespace") if opts.get(k)]
    return [_err(f"{at}.{k}", "KubeRay rejects it with backend rocksdb") for k in redis_only]


def _env_names(container: dict[str, Any]) -> set[str]:
    env = container.get("env") if isinstance(container.get("env"), list) else []
    return {e.get("name") for e in env if isinstance(e, dict)}


def _auth_rules(cluster: dict[str, Any], at: str) -> list[Finding]:
    auth = cluster.get("authOptions")
    if not isinstance(auth, dict) or auth.get("mode") != "token":
        return []
    found = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", str(cluster.get("rayVersion") or ""))
    if not found or tuple(int(x or 0) for x in found.groups()) < (2, 52, 0):
        return [_err(f"{at}.rayVersion", f"authOptions.mode token needs Ray 2.52.0 or later, got "
                     f"{cluster.get('rayVersion')!r}: KubeRay rejects it")]
    return []
