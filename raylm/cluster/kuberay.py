"""KubeRay: render, validate, kubectl. Kept so that `from raylm.cluster import kuberay` still works;
the code lives in k8s_render (config -> manifests), k8s_validate (manifests -> errors and
warnings) and k8s_kubectl (kustomize, apply, follow)."""

from raylm.cluster.k8s_kubectl import apply, follow_rayjob, kustomize
from raylm.cluster.k8s_render import API_VERSION, CONFIG_MOUNT, KUEUE_LABEL, render, resource_name, to_yaml
from raylm.cluster.k8s_validate import Report, validate, validate_path, validate_paths

__all__ = [
    "API_VERSION",
    "CONFIG_MOUNT",
    "KUEUE_LABEL",
    "Report",
    "apply",
    "follow_rayjob",
    "kustomize",
    "render",
    "resource_name",
    "to_yaml",
    "validate",
    "validate_path",
    "validate_paths",
]
