"""The `cluster` config section: where Ray runs and where runs are stored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator


class ClusterConfig(BaseModel):
    """Where Ray runs (embedded or an existing cluster) and where runs are stored."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'). "
        "Unset (and no RAY_ADDRESS): raylm starts an embedded local Ray.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs of the embedded Ray. Default: max(cores, 8), so that "
        "training workers and Ray Data tasks can share a small machine.",
    )
    include_dashboard: bool = Field(
        True,
        description="Start the embedded Ray's dashboard (bound to dashboard_host). Ray Train needs its "
        "state API to free the workers of a run whose driver died (e.g. a trial Tune stopped); "
        "without it Ray Train's cleaner logs a warning every second. `raylm tune` with ASHA/PBT "
        "refuses to run without it.",
    )
    dashboard_host: str = Field(
        "127.0.0.1", description="Interface the embedded dashboard binds to; keep local unless told."
    )
    storage_path: str = Field(
        "runs",
        description="Where runs and checkpoints live: a local path, s3://bucket/prefix or gs://... "
        "Multi-node training needs storage every node sees.",
    )
    object_store_memory_mb: int | None = Field(
        None, ge=64, description="Object store size of the embedded Ray (MiB)."
    )


# --- KubeRay (`k8s` section) --------------------------------------------------------------------

# The Ray version the image is built from (k8s/Dockerfile FROM rayproject/ray:<this>-py311); a test
# keeps the two, and pyproject's ray range, in step.
RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = f"raylm:0.1.0-ray{RAY_VERSION}"
# Kubernetes quantity: "4", "500m", "16Gi", "1.5".
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
_DNS1035 = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


def _num_to_str(v: Any) -> Any:
    # YAML reads `cpus: 8` as an int; Kubernetes quantities are strings.
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


Quantity = Annotated[str, BeforeValidator(_num_to_str), StringConstraints(pattern=_QUANTITY)]


class PodResources(BaseModel):
    """CPU, memory and GPUs of one Ray pod. Requests are set equal to limits (Guaranteed QoS):
    Ray sizes its object store and worker pool from the limits, so a pod that can burst past its
    requests gets OOM-killed under node pressure."""

    model_config = ConfigDict(extra="forbid")

    cpus: Quantity = Field("2", description="CPU limit = request, e.g. '8' or '500m'.")
    memory: Quantity = Field("8Gi", description="Memory limit = request, e.g. '64Gi'.")
    gpus: int = Field(0, ge=0, description="GPUs per pod (limits.<gpu_resource>); 0: none.")
    shm: Quantity | None = Field(
        None,
        description="Size limit of the in-memory /dev/shm volume (NCCL and the object store need "
        "more than the container default of 64Mi). Unset: no explicit limit.",
    )


class HeadConfig(PodResources):
    """The head pod. It runs the Ray Jobs driver only: `num-cpus: "0"` keeps training off it."""

    cpus: Quantity = Field("2", description="CPU limit = request of the head pod.")
    memory: Quantity = Field("8Gi", description="Memory limit = request of the head pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")


class WorkerGroupConfig(PodResources):
    """One KubeRay worker group: a set of identical worker pods."""

    name: str = Field("workers", pattern=_DNS1035, description="groupName (DNS-1035).")
    replicas: int = Field(1, ge=0, description="Pods at start.")
    min_replicas: int | None = Field(None, ge=0, description="Autoscaler lower bound (default: replicas).")
    max_replicas: int | None = Field(None, ge=0, description="Autoscaler upper bound (default: replicas).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations. With gpus > 0 a toleration for the usual "
        "'nvidia.com/gpu:NoSchedule' taint is added unless one for that key is given.",
    )
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources of each pod (rayStartParams resources)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "WorkerGroupConfig":
        lo, hi = self.min_, self.max_
        if lo > hi:
            raise ValueError(f"worker group '{self.name}': min_replicas ({lo}) is above max_replicas ({hi})")
        if not lo <= self.replicas <= hi:
            raise ValueError(
                f"worker group '{self.name}': replicas ({self.replicas}) outside [{lo}, {hi}]"
            )
        return self

    @property
    def min_(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas

    @property
    def max_(self) -> int:
        return self.replicas if self.max_replicas is None else self.max_replicas


class StorageConfig(BaseModel):
    """Checkpoint storage every pod sees. Multi-node Ray Train writes checkpoints from each
    worker and reads them on the driver, so a node-local disk is not enough."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["pvc", "s3", "gcs", "none"] = Field(
        "pvc",
        description="pvc: a PersistentVolumeClaim mounted at `mount_path` on every pod "
        "(ReadWriteMany across nodes); s3/gcs: cluster.storage_path is s3:// or gs://, "
        "credentials from a Secret; none: single pod only.",
    )
    claim_name: str = Field("raylm-shared", description="pvc: the claim to mount (created by you).")
    mount_path: str = Field("/mnt/shared", pattern=r"^/", description="pvc: mount path on every pod.")
    secret_name: str | None = Field(
        None,
        description="s3: Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; gcs: Secret "
        "with key 'key.json' (a service-account key). Unset: pods use their workload identity.",
    )
    endpoint_url: str | None = Field(
        None, description="s3: endpoint of an S3-compatible store (MinIO, Ceph), set as AWS_ENDPOINT_URL."
    )
    region: str | None = Field(None, description="s3: AWS_REGION.")


class K8sConfig(BaseModel):
    """How `raylm k8s render` turns this config into KubeRay manifests (see raylm.cluster.k8s_render)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["RayJob", "RayCluster"] = Field(
        "RayJob",
        description="RayJob: a cluster per run that runs `raylm train` and goes away; RayCluster: "
        "a long-lived cluster for `raylm submit`.",
    )
    name: str | None = Field(
        None,
        pattern=_DNS1035,
        max_length=47,
        description="Resource name (DNS-1035, at most 47 characters: KubeRay appends 6 for the "
        "RayJob's cluster). Default: from trainer.run_name.",
    )
    namespace: str | None = Field(None, pattern=_DNS1035, description="Namespace; unset: kubectl's.")
    image: str = Field(DEFAULT_IMAGE, description="Image built by k8s/Dockerfile (Ray + raylm).")
    ray_version: str = Field(
        RAY_VERSION, pattern=r"^\d+\.\d+\.\d+$", description="rayVersion; must match the image's Ray."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of every Ray container."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of Secrets for a private registry (imagePullSecrets)."
    )
    service_account: str | None = Field(None, description="Pod serviceAccountName (workload identity).")
    head: HeadConfig = Field(default_factory=HeadConfig, description=HeadConfig.__doc__)
    worker_groups: list[WorkerGroupConfig] = Field(
        default_factory=lambda: [WorkerGroupConfig()], description="Worker groups (at least one)."
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description=StorageConfig.__doc__)
    wandb_secret: str | None = Field(
        None, description="Secret with key WANDB_API_KEY, exposed to every pod through secretKeyRef."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra non-secret environment variables of every pod."
    )
    kueue_queue: str | None = Field(
        None, description="Kueue LocalQueue: sets the label kueue.x-k8s.io/queue-name."
    )
    submission_mode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"] = Field(
        "K8sJobMode", description="RayJob: how KubeRay submits the job."
    )
    shutdown_after_job_finishes: bool = Field(True, description="RayJob: delete the cluster at the end.")
    ttl_seconds_after_finished: int | None = Field(
        600, ge=0, description="RayJob: seconds to keep the cluster after the job (for logs)."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="RayJob: fail the job after this many seconds."
    )
    backoff_limit: int = Field(0, ge=0, description="RayJob: retries with a fresh cluster.")
    auth: Literal["token", "disabled"] = Field(
        "token",
        description="Ray token authentication (authOptions.mode, KubeRay >= 1.5.1, Ray >= 2.52): the "
        "operator keeps a random token in a Secret named after the cluster and gives it to every "
        "Ray container; clients need RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.",
    )
    autoscaling: bool | None = Field(
        None, description="enableInTreeAutoscaling. Default: on when a group has min != max."
    )
    gcs_ft: Literal["off", "redis"] = Field(
        "off",
        description="GCS fault tolerance (spec.gcsFaultToleranceOptions): 'redis' keeps the cluster "
        "state in an external Redis, so a restarted head pod finds its workers (and the run) still "
        "alive instead of starting over; 'off': the head pod and the cluster share one fate.",
    )
    redis_address: str | None = Field(
        None,
        description="gcs_ft redis: the Redis the GCS writes to, host:port or redis://host:port "
        "(rediss:// for TLS). A plain value: KubeRay's CRD takes no Secret for it.",
    )
    redis_password_secret: str | None = Field(
        None,
        description="gcs_ft redis: Secret holding the Redis password (key: redis_password_key), "
        "passed as redisPassword.valueFrom.secretKeyRef. Unset: a Redis without a password.",
    )
    redis_password_key: str = Field(
        "password", description="gcs_ft redis: key of the password in redis_password_secret."
    )

    @model_validator(mode="after")
    def _check(self) -> "K8sConfig":
        if not self.worker_groups:
            raise ValueError("k8s.worker_groups: give at least one worker group")
        names = [g.name for g in self.worker_groups]
        if len(set(names)) != len(names):
            raise ValueError(f"k8s.worker_groups: group names must differ (got {names})")
        if self.ttl_seconds_after_finished and not self.shutdown_after_job_finishes:
            raise ValueError("k8s.ttl_seconds_after_finished needs shutdown_after_job_finishes: true")
        if self.gcs_ft == "redis" and not self.redis_address:
            raise ValueError("k8s.gcs_ft redis needs k8s.redis_address (e.g. redis.ray:6379)")
        if self.gcs_ft == "off" and (self.redis_address or self.redis_password_secret):
            raise ValueError("k8s.redis_address / redis_password_secret are only used with k8s.gcs_ft: redis")
        return self
