"""Where Ray runs: embedded local Ray or a cluster; storage; job submission; KubeRay."""

from raylm.cluster._connect import connect, init_kwargs, resolve_address
from raylm.cluster.config import ClusterConfig, K8sConfig
from raylm.cluster.jobs import submit
from raylm.cluster.k8s_render import render
from raylm.cluster.k8s_validate import validate, validate_paths
from raylm.cluster.storage import resolve as resolve_storage
from raylm.cluster.storage import run_storage

__all__ = [
    "ClusterConfig",
    "K8sConfig",
    "connect",
    "init_kwargs",
    "render",
    "resolve_address",
    "resolve_storage",
    "run_storage",
    "submit",
    "validate",
    "validate_paths",
]
