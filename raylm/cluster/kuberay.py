"""KubeRay manifests: render a RayJob (or RayCluster) + ConfigMap from a raylm config.

The config file travels in a ConfigMap mounted at /config on every Ray pod, and the job runs
`raylm train /config/<file>.yaml`: manifests point at the config, they do not repeat it.
`validate` checks manifests against the KubeRay CRD schemas (strictly, see `_schema`) plus the
rules a schema cannot express; `apply` hands them to kubectl and follows the RayJob.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raylm.cluster._schema import Schemas, check, load_crds
from raylm.cluster.config import HeadConfig, K8sConfig, PodResources, WorkerGroupConfig
from raylm.errors import UserError

if TYPE_CHECKING:  # raylm.config imports this package: no runtime import
    from raylm.config import RootConfig

API_VERSION = "ray.io/v1"
CONFIG_MOUNT = "/config"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The rayproject/ray images run as user `ray` (uid 1000, gid 100).
RAY_UID, RAY_GID = 1000, 100


def resource_name(cfg: RootConfig) -> str:
    """k8s.name, else trainer.run_name made DNS-1035 (lowercase, dashes, starts with a letter)."""
    if cfg.k8s.name:
        return cfg.k8s.name
    name = re.sub(r"[^a-z0-9-]+", "-", cfg.trainer.run_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"raylm-{name}".rstrip("-")
    return name[:63].rstrip("-")


def render(cfg: RootConfig, config_path: str | Path | None = None) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob|RayCluster] for `cfg` (a RootConfig); raises UserError if the config
    cannot run on Kubernetes as given (e.g. multi-node without shared storage)."""
    from raylm.config import dump_config

    _check_runnable(cfg)
    name = resource_name(cfg)
    key = Path(config_path).name if config_path else "raylm.yaml"
    if not key.endswith((".yaml", ".yml")):
        key += ".yaml"
    cm = _config_map(cfg.k8s, name, key, dump_config(cfg))
    cluster = _cluster_spec(cfg.k8s, name, cm["metadata"]["name"])
    if cfg.k8s.kind == "RayCluster":
        return [cm, _resource(cfg.k8s, "RayCluster", name, cluster)]
    return [cm, _resource(cfg.k8s, "RayJob", name, _job_spec(cfg.k8s, key, cluster))]


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


# --- checks that need the whole config ---------------------------------------------------------


def _check_runnable(cfg: RootConfig) -> None:
    k8s, path = cfg.k8s, cfg.cluster.storage_path
    problems = []
    scheme = {"s3": "s3://", "gcs": "gs://"}.get(k8s.storage.type)
    if scheme and not path.startswith(scheme):
        problems.append(f"cluster.storage_path '{path}' must start with {scheme} for k8s.storage.type {k8s.storage.type}")
    mount = k8s.storage.mount_path
    if k8s.storage.type == "pvc" and not _under(path, mount):
        problems.append(
            f"cluster.storage_path '{path}' is not on the shared volume: use a path under "
            f"k8s.storage.mount_path ({mount}), e.g. {mount}/runs"
        )
    # Ray Data reads the shards from whichever pod runs the task: they must be shared too.
    prepared = cfg.data.prepared_dir
    if k8s.storage.type == "pvc" and "://" not in prepared and not _under(prepared, mount):
        problems.append(
            f"data.prepared_dir '{prepared}' is not on the shared volume: use a path under {mount}, "
            f"e.g. {mount}/data/prepared"
        )
    if k8s.storage.type == "none" and sum(g.max_ for g in k8s.worker_groups) > 1:
        problems.append(
            "k8s.storage.type none with more than one worker pod: checkpoints need storage every "
            "pod sees (pvc, s3 or gcs)"
        )
    if cfg.cluster.address:
        problems.append(
            f"cluster.address '{cfg.cluster.address}' would make the job leave its own cluster: "
            "unset it (Ray Jobs sets RAY_ADDRESS for the driver)"
        )
    if problems:
        raise UserError(problems, hint="fix the config or override, e.g. cluster.storage_path=/mnt/shared/runs")


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


# --- documents --------------------------------------------------------------------------------


def _metadata(k8s: K8sConfig, name: str, kueue: bool = False) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "raylm", "app.kubernetes.io/instance": name}
    if kueue and k8s.kueue_queue:
        labels[KUEUE_LABEL] = k8s.kueue_queue
    meta: dict[str, Any] = {"name": name}
    if k8s.namespace:
        meta["namespace"] = k8s.namespace
    meta["labels"] = labels
    return meta


def _config_map(k8s: K8sConfig, name: str, key: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(k8s, f"{name}-config"),
        "data": {key: text},
    }


def _resource(k8s: K8sConfig, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    # Kueue admits the top-level object: the queue label goes on the RayJob or RayCluster.
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": _metadata(k8s, name, kueue=True), "spec": spec}


def _job_spec(k8s: K8sConfig, key: str, cluster: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "entrypoint": f"raylm train {CONFIG_MOUNT}/{key}",
        "submissionMode": k8s.submission_mode,
        "shutdownAfterJobFinishes": k8s.shutdown_after_job_finishes,
    }
    if k8s.shutdown_after_job_finishes and k8s.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    if k8s.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    spec["backoffLimit"] = k8s.backoff_limit
    if k8s.submission_mode == "K8sJobMode":
        spec["submitterPodTemplate"] = _submitter_template(k8s)
    spec["rayClusterSpec"] = cluster
    return spec


def _submitter_template(k8s: K8sConfig) -> dict[str, Any]:
    # KubeRay's default submitter pod sets no securityContext and no limits; this one is small,
    # non-root and bounded. No command: KubeRay fills in `ray job submit ... -- <entrypoint>`.
    amounts = {"cpu": "500m", "memory": "1Gi"}
    container = {
        "name": "ray-job-submitter",
        "image": k8s.image,
        "imagePullPolicy": k8s.image_pull_policy,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": _container_security(),
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "securityContext": _pod_security(), "containers": [container]}
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k8s.image_pull_secrets]
    return {"spec": spec}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,  # so the shared volume is writable by the ray user
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _cluster_spec(k8s: K8sConfig, name: str, config_map: str) -> dict[str, Any]:
    autoscale = k8s.autoscaling
    if autoscale is None:
        autoscale = any(g.min_ != g.max_ for g in k8s.worker_groups)
    head = {
        # num-cpus 0: the head schedules no training work, so its pod can stay small and a
        # worker OOM never takes the GCS down with it.
        "rayStartParams": {"num-cpus": "0"},
        "template": _pod_template(k8s, name, "head", k8s.head, config_map),
    }
    return {
        "rayVersion": k8s.ray_version,
        # Without a token anyone who reaches the dashboard (8265) or GCS can run code on the cluster.
        "authOptions": {"mode": k8s.auth},
        "enableInTreeAutoscaling": autoscale,
        "headGroupSpec": head,
        "workerGroupSpecs": [_worker_group(k8s, name, g, config_map) for g in k8s.worker_groups],
    }


def _worker_group(k8s: K8sConfig, name: str, g: WorkerGroupConfig, config_map: str) -> dict[str, Any]:
    params: dict[str, str] = {}
    if g.ray_resources:
        # KubeRay passes the value to `ray start --resources=...` through a shell: quote the JSON.
        params["resources"] = '"' + json.dumps(g.ray_resources).replace('"', '\\"') + '"'
    return {
        "groupName": g.name,
        "replicas": g.replicas,
        "minReplicas": g.min_,
        "maxReplicas": g.max_,
        "rayStartParams": params,
        "template": _pod_template(k8s, name, "worker", g, config_map),
    }


def _pod_template(
    k8s: K8sConfig, name: str, role: str, res: HeadConfig | WorkerGroupConfig, config_map: str
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [_container(k8s, role, res)],
        "volumes": _volumes(k8s, config_map, res),
    }
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k8s.image_pull_secrets]
    if res.node_selector:
        spec["nodeSelector"] = dict(res.node_selector)
    tolerations = _tolerations(k8s, res)
    if tolerations:
        spec["tolerations"] = tolerations
    labels = {"app.kubernetes.io/name": "raylm", "app.kubernetes.io/instance": name, "app.kubernetes.io/component": role}
    return {"metadata": {"labels": labels}, "spec": spec}


def _tolerations(k8s: K8sConfig, res: HeadConfig | WorkerGroupConfig) -> list[dict[str, Any]]:
    out = [dict(t) for t in res.tolerations]
    # GPU node pools are usually tainted nvidia.com/gpu:NoSchedule (GKE does it for you).
    if res.gpus and not any(t.get("key") == k8s.gpu_resource for t in out):
        out.append({"key": k8s.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return out


def _resources(k8s: K8sConfig, res: PodResources) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": res.cpus, "memory": res.memory}
    if res.gpus:
        amounts[k8s.gpu_resource] = res.gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container(k8s: K8sConfig, role: str, res: HeadConfig | WorkerGroupConfig) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": f"ray-{role}",
        "image": k8s.image,
        "imagePullPolicy": k8s.image_pull_policy,
        "resources": _resources(k8s, res),
        "env": _env(k8s),
        "volumeMounts": _mounts(k8s),
        "securityContext": _container_security(),
    }
    if role == "head":
        c["ports"] = [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ]
    return c


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(k8s: K8sConfig) -> list[dict[str, Any]]:
    env = [{"name": "RAY_TRAIN_V2_ENABLED", "value": "1"}, {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    env += [{"name": k, "value": v} for k, v in sorted(k8s.env.items())]
    st = k8s.storage
    if st.type == "s3":
        if st.secret_name:
            env += [_secret_env(k, st.secret_name, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        if st.endpoint_url:
            env.append({"name": "AWS_ENDPOINT_URL", "value": st.endpoint_url})
        if st.region:
            env.append({"name": "AWS_REGION", "value": st.region})
    if st.type == "gcs" and st.secret_name:
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/gcs/key.json"})
    if k8s.wandb_secret:
        env.append(_secret_env("WANDB_API_KEY", k8s.wandb_secret, "WANDB_API_KEY"))
    return env


def _mounts(k8s: K8sConfig) -> list[dict[str, Any]]:
    mounts = [
        {"name": "raylm-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if k8s.storage.type == "pvc":
        mounts.append({"name": "shared", "mountPath": k8s.storage.mount_path})
    if k8s.storage.type == "gcs" and k8s.storage.secret_name:
        mounts.append({"name": "gcs-key", "mountPath": "/var/secrets/gcs", "readOnly": True})
    return mounts


def _volumes(k8s: K8sConfig, config_map: str, res: PodResources) -> list[dict[str, Any]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if res.shm:
        shm["sizeLimit"] = res.shm
    vols: list[dict[str, Any]] = [
        {"name": "raylm-config", "configMap": {"name": config_map}},
        {"name": "dshm", "emptyDir": shm},
    ]
    if k8s.storage.type == "pvc":
        vols.append({"name": "shared", "persistentVolumeClaim": {"claimName": k8s.storage.claim_name}})
    if k8s.storage.type == "gcs" and k8s.storage.secret_name:
        vols.append({"name": "gcs-key", "secret": {"secretName": k8s.storage.secret_name}})
    return vols


# --- validate ---------------------------------------------------------------------------------

SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RAY_IMAGES = ("rayproject/ray", "rayproject/ray-ml", "anyscale/ray")
_CORE_KINDS = ("ConfigMap", "Secret", "PersistentVolumeClaim", "Namespace", "ServiceAccount", "Service")
Problem = tuple[str, str]  # (field path, what is wrong)


def validate(
    docs: list[Any], crds_dir: str | Path | None = None, origin: str = "<rendered>", schemas: Schemas | None = None
) -> list[str]:
    """One line per problem: 'origin[doc N kind/name]: field.path: what is wrong'."""
    schemas = schemas if schemas is not None else load_crds(crds_dir)
    lines = []
    for i, doc in enumerate(docs):
        if doc is None:  # an empty document between two '---'
            continue
        where = f"{origin}[doc {i} {_label(doc)}]"
        lines += [f"{where}: {path or '(root)'}: {msg}" for path, msg in _doc_problems(doc, schemas)]
    return lines


def _label(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "?"
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    return f"{doc.get('kind', '?')}/{name}"


def _doc_problems(doc: Any, schemas: Schemas) -> list[Problem]:
    if not isinstance(doc, dict):
        return [("", f"expected a mapping (a Kubernetes object), got {type(doc).__name__}")]
    head = [(k, "required field is missing") for k in ("apiVersion", "kind", "metadata") if k not in doc]
    if head:
        return head
    api, kind = doc["apiVersion"], doc["kind"]
    out = _meta_problems(doc, kind)
    if str(api).split("/")[0] != "ray.io":
        return out + _core_problems(doc, kind)
    schema = schemas.get((api, kind))
    if schema is None:
        known = ", ".join(f"{a} {k}" for a, k in sorted(schemas)) or "none"
        return out + [("apiVersion", f"no CRD schema for {api} {kind} (known: {known})")]
    body = {k: v for k, v in doc.items() if k != "metadata"}  # ObjectMeta is not in the CRD schema
    out += [(p, _explain(p, m)) for p, m in check(body, schema)]
    return out + _ray_rules(doc)


def _explain(path: str, msg: str) -> str:
    if ".rayStartParams." in path and msg.startswith("expected a string"):
        return msg + " (rayStartParams values are strings: quote it)"
    return msg


def _meta_problems(doc: dict[str, Any], kind: str) -> list[Problem]:
    meta = doc["metadata"]
    if not isinstance(meta, dict) or not meta.get("name"):
        return [("metadata.name", "required field is missing")]
    name = str(meta["name"])
    # KubeRay derives Service and pod names from it: DNS-1035 (lowercase, starts with a letter).
    if kind in ("RayJob", "RayCluster") and not _DNS1035.match(name):
        return [("metadata.name", f"'{name}' is not a DNS-1035 label (lowercase letters, digits, '-', "
                 "starting with a letter, at most 63 characters)")]
    return []


def _core_problems(doc: dict[str, Any], kind: str) -> list[Problem]:
    if kind not in _CORE_KINDS:
        return []
    if kind == "ConfigMap":
        data = doc.get("data") or {}
        return [(f"data.{k}", "values must be strings") for k, v in data.items() if not isinstance(v, str)]
    return []


def _ray_rules(doc: dict[str, Any]) -> list[Problem]:
    kind, spec = doc["kind"], doc.get("spec")
    if not isinstance(spec, dict):
        return []
    if kind == "RayCluster":
        return _cluster_rules(spec, "spec")
    if kind != "RayJob":
        return []
    out = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        out.append(("spec.submissionMode", f"{mode!r} is not one of {list(SUBMISSION_MODES)}"))
    if spec.get("ttlSecondsAfterFinished") and not spec.get("shutdownAfterJobFinishes"):
        out.append(("spec.ttlSecondsAfterFinished", "has no effect without spec.shutdownAfterJobFinishes: true"))
    if mode != "InteractiveMode" and not spec.get("entrypoint"):
        out.append(("spec.entrypoint", f"required with submissionMode {mode}"))
    cluster = spec.get("rayClusterSpec")
    if cluster is None and not spec.get("clusterSelector"):
        out.append(("spec.rayClusterSpec", "required field is missing (or give spec.clusterSelector)"))
    if isinstance(cluster, dict):
        out += _cluster_rules(cluster, "spec.rayClusterSpec")
    return out


def _cluster_rules(cluster: dict[str, Any], at: str) -> list[Problem]:
    out = []
    head = cluster.get("headGroupSpec")
    if isinstance(head, dict):
        out += _group_rules(head, f"{at}.headGroupSpec", cluster.get("rayVersion"))
    groups = cluster.get("workerGroupSpecs") or []
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        if isinstance(g, dict):
            out += _worker_rules(g, f"{at}.workerGroupSpecs[{i}]", cluster.get("rayVersion"))
    return out


def _worker_rules(g: dict[str, Any], at: str, ray_version: Any) -> list[Problem]:
    out = []
    lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1)
    if isinstance(lo, int) and isinstance(hi, int):
        if lo > hi:
            out.append((at, f"minReplicas ({lo}) is above maxReplicas ({hi})"))
        elif isinstance(g.get("replicas"), int) and not lo <= g["replicas"] <= hi:
            out.append((f"{at}.replicas", f"{g['replicas']} is outside [minReplicas {lo}, maxReplicas {hi}]"))
    name = g.get("groupName")
    if isinstance(name, str) and not _DNS1123_LABEL.match(name):
        out.append((f"{at}.groupName", f"'{name}' is not a DNS-1123 label (lowercase letters, digits, '-')"))
    return out + _group_rules(g, at, ray_version)


def _group_rules(g: dict[str, Any], at: str, ray_version: Any) -> list[Problem]:
    template = g.get("template") if isinstance(g.get("template"), dict) else {}
    containers = ((template.get("spec") or {}).get("containers")) or []
    if not isinstance(containers, list):
        return []
    out, gpu_limited = [], False
    for j, c in enumerate(containers):
        if not isinstance(c, dict):
            continue
        where = f"{at}.template.spec.containers[{j}]"
        res = c.get("resources") if isinstance(c.get("resources"), dict) else {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        gpu_limited = gpu_limited or any(_is_gpu(k) and str(v) not in ("0", "") for k, v in limits.items())
        for k, v in requests.items():
            if _is_gpu(k) and k not in limits:
                out.append((f"{where}.resources.limits", f"GPUs are requested ({k}: {v}) but not limited: set limits.{k}"))
        out += _image_rule(c.get("image"), ray_version, f"{where}.image")
    params = g.get("rayStartParams") or {}
    gpus = params.get("num-gpus") if isinstance(params, dict) else None
    if gpus not in (None, "0", 0) and not gpu_limited:
        out.append((f"{at}.rayStartParams.num-gpus", f"Ray is told of {gpus} GPU(s) but no container has a GPU limit"))
    return out


def _is_gpu(resource: str) -> bool:
    return resource.endswith("/gpu")


def _image_rule(image: Any, ray_version: Any, at: str) -> list[Problem]:
    if not isinstance(image, str) or not isinstance(ray_version, str) or ":" not in image.rsplit("/", 1)[-1]:
        return []
    repo, tag = image.rsplit(":", 1)
    if repo in _RAY_IMAGES:
        found = re.match(r"(\d+\.\d+\.\d+)", tag)
    else:  # raylm images carry the Ray version as '-ray<version>' in their tag
        found = re.search(r"ray-?(\d+\.\d+\.\d+)", tag)
    if found and found.group(1) != ray_version:
        return [(at, f"image has Ray {found.group(1)} but rayVersion is {ray_version}: make them match")]
    return []


# --- files, kustomize, apply ------------------------------------------------------------------


def _kubectl() -> str:
    exe = os.environ.get("RAYLM_KUBECTL") or shutil.which("kubectl")
    if not exe:
        raise UserError("kubectl not found on PATH", hint="install kubectl or set RAYLM_KUBECTL")
    return exe


def kustomize(path: str | Path) -> str:
    """`kubectl kustomize PATH` (works offline)."""
    res = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"{path}: kubectl kustomize failed: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout


def _is_raylm_config(doc: Any) -> bool:
    from raylm.config import RootConfig

    return isinstance(doc, dict) and "kind" not in doc and set(doc) <= set(RootConfig.model_fields)


def validate_path(path: str | Path, schemas: Schemas) -> list[str]:
    """A manifest file, a raylm config file, a kustomization dir (built), or a dir of those."""
    p = Path(path)
    if p.is_dir():
        if (p / "kustomization.yaml").is_file() or (p / "kustomization.yml").is_file():
            docs = list(yaml.safe_load_all(kustomize(p)))
            return validate(docs, origin=f"{p} (kustomize)", schemas=schemas)
        return [line for f in sorted(p.glob("*.y*ml")) for line in validate_path(f, schemas)]
    if not p.is_file():
        return [f"{p}: no such file or folder"]
    if p.name in ("kustomization.yaml", "kustomization.yml"):
        return validate_path(p.parent, schemas)
    try:
        docs = list(yaml.safe_load_all(p.read_text()))
    except yaml.YAMLError as err:
        return [f"{p}: not valid YAML ({getattr(err, 'problem', err)})"]
    if len(docs) == 1 and _is_raylm_config(docs[0]):
        return _config_problems(p)
    return validate(docs, origin=str(p), schemas=schemas)


def _config_problems(p: Path) -> list[str]:
    from raylm.config import load_config

    try:
        load_config(p)
    except UserError as err:
        return list(err.problems)
    return []


def validate_paths(paths: list[str | Path], crds_dir: str | Path | None = None) -> list[str]:
    schemas = load_crds(crds_dir)
    return [line for p in paths for line in validate_path(p, schemas)]


def apply(manifest: str, namespace: str | None = None, dry_run: bool = False) -> None:
    """`kubectl apply -f -` with the rendered YAML (server-side dry run with `dry_run`)."""
    cmd = [_kubectl(), "apply", "-f", "-"]
    if namespace:
        cmd += ["-n", namespace]
    if dry_run:
        cmd.append("--dry-run=server")
    res = subprocess.run(cmd, input=manifest, text=True, capture_output=True)
    sys.stdout.write(res.stdout)
    if res.returncode != 0:
        raise UserError(f"kubectl apply failed: {res.stderr.strip()}")


def follow_rayjob(name: str, namespace: str | None = None, poll_s: float = 5.0, timeout_s: float | None = None) -> str:
    """Print the RayJob's status transitions until it ends; return the Ray job status."""
    cmd = [_kubectl(), "get", "rayjob", name, "-o", "jsonpath={.status.jobDeploymentStatus} {.status.jobStatus}"]
    if namespace:
        cmd += ["-n", namespace]
    last, start = None, time.monotonic()
    while True:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError(f"kubectl get rayjob {name} failed: {res.stderr.strip()}")
        deploy, _, job = res.stdout.strip().partition(" ")
        if (deploy, job) != last:
            print(f"rayjob/{name}: deployment={deploy or '-'} job={job or '-'}", flush=True)
            last = (deploy, job)
        if deploy in ("Complete", "Failed") or job in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job or "FAILED"
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return "TIMEOUT"
        time.sleep(poll_s)
