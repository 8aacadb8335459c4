"""KubeRay manifests from a raylm config: a ConfigMap with the config + a RayJob (or RayCluster).

The config file travels in a ConfigMap mounted at /config on every Ray pod, and the job runs
`raylm train /config/<file>.yaml`: manifests point at the config, they do not repeat it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raylm.cluster.config import HeadConfig, K8sConfig, PodResources, WorkerGroupConfig
from raylm.cluster.storage import is_remote
from raylm.errors import UserError

if TYPE_CHECKING:  # raylm.config imports this package: no runtime import
    from raylm.config import RootConfig

API_VERSION = "ray.io/v1"
CONFIG_MOUNT = "/config"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The rayproject/ray images run as user `ray` (uid 1000, gid 100).
RAY_UID, RAY_GID = 1000, 100
# KubeRay appends 6 characters to a RayJob's name for its RayCluster, whose names stop at 53
# (kuberay utils/constant.go MaxRayJobNameLength): longer RayJob names fail its validation.
MAX_RAYJOB_NAME = 47


def resource_name(cfg: RootConfig) -> str:
    """k8s.name, else trainer.run_name made DNS-1035 (lowercase, dashes, starts with a letter)."""
    if cfg.k8s.name:
        return cfg.k8s.name
    name = re.sub(r"[^a-z0-9-]+", "-", cfg.trainer.run_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"raylm-{name}".rstrip("-")
    return name[:MAX_RAYJOB_NAME].rstrip("-")


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
    if k8s.storage.type == "pvc" and not is_remote(prepared) and not _under(prepared, mount):
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
    head: dict[str, Any] = {
        # num-cpus 0: the head schedules no training work, so its pod can stay small and a
        # worker OOM never takes the GCS down with it.
        "rayStartParams": {"num-cpus": "0"},
        "template": _pod_template(k8s, name, "head", k8s.head, config_map),
    }
    spec: dict[str, Any] = {
        "rayVersion": k8s.ray_version,
        # Without a token anyone who reaches the dashboard (8265) or GCS can run code on the cluster.
        "authOptions": {"mode": k8s.auth},
        "enableInTreeAutoscaling": autoscale,
    }
    if k8s.gcs_ft == "redis":
        spec["gcsFaultToleranceOptions"] = _gcs_ft(k8s)
    spec["headGroupSpec"] = head
    spec["workerGroupSpecs"] = [_worker_group(k8s, name, g, config_map) for g in k8s.worker_groups]
    return spec


def _gcs_ft(k8s: K8sConfig) -> dict[str, Any]:
    # KubeRay >= 1.3 form: the operator sets RAY_REDIS_ADDRESS and REDIS_PASSWORD on the head and
    # a longer GCS reconnect timeout on the workers, so they survive a head restart. The CRD takes
    # the address as a plain string; only credentials can come from a Secret.
    opts: dict[str, Any] = {"redisAddress": k8s.redis_address}
    if k8s.redis_password_secret:
        ref = {"name": k8s.redis_password_secret, "key": k8s.redis_password_key}
        opts["redisPassword"] = {"valueFrom": {"secretKeyRef": ref}}
    return opts


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
