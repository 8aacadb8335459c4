"""Where Ray runs: embedded local Ray or a cluster; storage; job submission; KubeRay."""

from raylm.cluster._connect import connect, init_kwargs, resolve_address
from raylm.cluster.config import ClusterConfig

__all__ = ["ClusterConfig", "connect", "init_kwargs", "resolve_address"]
