"""KubeRay render and validate, without a cluster: the real CRD schemas of ../shared/kuberay/crds
and `kubectl kustomize` (offline) on the shipped k8s/ folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raylm.cluster import k8s_kubectl, k8s_render
from raylm.cluster._schema import load_crds
from raylm.cluster.k8s_validate import Report, validate, validate_path
from raylm.config import load_config
from raylm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
needs_kubectl = pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not on PATH (kustomize build)")


def _kustomize(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(k8s_kubectl.kustomize(path)) if d]


def _render(overrides: list[str] | None = None, config: str = "configs/cluster-cpu.yaml") -> list[dict]:
    return k8s_render.render(load_config(REPO / config, overrides), config)


def _find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


# --- shipped files ----------------------------------------------------------------------------


def test_every_file_in_k8s_validates(schemas: dict) -> None:
    files = sorted(p for p in K8S.rglob("*.y*ml"))
    assert len(files) >= 8, files
    for f in files:
        if f.name == "kustomization.yaml" and not shutil.which("kubectl"):
            continue
        assert validate_path(f, schemas) == Report(), f  # no errors, no warnings


@needs_kubectl
@pytest.mark.parametrize("overlay", [K8S / "base", *OVERLAYS], ids=lambda p: p.name)
def test_kustomize_builds_validate(overlay: Path, schemas: dict) -> None:
    docs = _kustomize(overlay)
    assert validate(docs, schemas=schemas, origin=str(overlay)) == Report()
    kinds = sorted(d["kind"] for d in docs)
    assert "ConfigMap" in kinds and ("RayJob" in kinds or "RayCluster" in kinds)
    assert not ("RayJob" in kinds and "RayCluster" in kinds), "an overlay must not start two clusters"


@needs_kubectl
def test_overlays_are_what_they_say() -> None:
    assert {p.name for p in OVERLAYS} >= {"cpu-dev", "gpu-multinode"}
    dev = _find(_kustomize(K8S / "overlays" / "cpu-dev"), "RayJob")["spec"]["rayClusterSpec"]
    assert dev["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    gpu_docs = _kustomize(K8S / "overlays" / "gpu-multinode")
    group = _find(gpu_docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 8
    assert _find(gpu_docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


@needs_kubectl
def test_configmap_holds_the_config_the_entrypoint_names() -> None:
    for path in [K8S / "base", K8S / "overlays" / "gpu-multinode"]:
        docs = _kustomize(path)
        job, cm = _find(docs, "RayJob"), _find(docs, "ConfigMap")
        key = job["spec"]["entrypoint"].split("/config/")[1]
        assert key in cm["data"]
        volumes = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
        assert {"name": "raylm-config", "configMap": {"name": cm["metadata"]["name"]}} in volumes
        assert load_config(REPO / "configs" / key).k8s.kind == "RayJob"  # configs/ links to it


def test_base_rayjob_is_the_rendered_one() -> None:
    shipped = yaml.safe_load((K8S / "base" / "rayjob.yaml").read_text())
    assert shipped == _find(_render(), "RayJob"), "re-render k8s/base/rayjob.yaml from configs/cluster-cpu.yaml"
    shipped = yaml.safe_load((K8S / "overlays" / "raycluster" / "raycluster.yaml").read_text())
    assert shipped == _find(_render(["k8s.kind=RayCluster"]), "RayCluster")


@needs_kubectl
def test_gpu_overlay_is_the_rendered_gpu_config() -> None:
    built = _find(_kustomize(K8S / "overlays" / "gpu-multinode"), "RayJob")
    assert built == _find(_render(config="configs/cluster-gpu.yaml"), "RayJob")


def test_dockerfile_pins_the_ray_of_k8s_config_and_pyproject() -> None:
    from packaging.specifiers import SpecifierSet

    from raylm.cluster.config import RAY_VERSION

    text = (K8S / "Dockerfile").read_text()
    pins = set(re.findall(r"^ARG RAY_VERSION=(\S+)$", text, re.M))
    assert pins == {RAY_VERSION}
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-", text, re.M)
    assert re.search(r"^USER (1000|ray)$", text.strip().splitlines()[-1], re.M), "the image must end non-root"
    ray_dep = next(d for d in _pyproject_deps() if d.startswith("ray["))
    assert RAY_VERSION in SpecifierSet(ray_dep.split("]", 1)[1])


def _pyproject_deps() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


# --- render -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_render_validate_round_trip_of_shipped_configs(config: str, schemas: dict) -> None:
    cfg = load_config(REPO / "configs" / config)
    if not cfg.cluster.storage_path.startswith(cfg.k8s.storage.mount_path):  # a laptop recipe
        shared = ["cluster.storage_path=/mnt/shared/runs", "data.prepared_dir=/mnt/shared/prepared"]
        cfg = load_config(REPO / "configs" / config, shared)
    docs = k8s_render.render(cfg, config)
    assert validate(docs, schemas=schemas) == Report()
    # The ConfigMap carries the resolved config: loading it gives the same config back.
    text = docs[0]["data"][config]
    assert load_config_from_text(text) == cfg


def load_config_from_text(text: str):
    from raylm.config import validate

    return validate(yaml.safe_load(text))


def test_render_gpu_job_fields() -> None:
    docs = _render(
        [
            "k8s.worker_groups=[{name: gpu, replicas: 2, min_replicas: 1, max_replicas: 4, gpus: 8, cpus: 32, memory: 200Gi}]",
            "k8s.wandb_secret=wandb-key",
            "k8s.kueue_queue=team-a",
            "k8s.active_deadline_seconds=3600",
            "k8s.backoff_limit=2",
        ]
    )
    cm, job = docs
    spec = job["spec"]
    assert job["metadata"]["labels"][k8s_render.KUEUE_LABEL] == "team-a"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 2
    assert spec["entrypoint"] == "raylm train /config/cluster-cpu.yaml" and "cluster-cpu.yaml" in cm["data"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token"}  # secure by default
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    group = cluster["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (1, 2, 4)
    pod = group["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 8 and res["requests"] == res["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    for pod in _pods(job):
        c = pod["containers"][0]
        assert c["image"].endswith("ray2.60.0")
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["privileged"] is False
        wandb = next(e for e in c["env"] if e["name"] == "WANDB_API_KEY")
        assert wandb == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb-key", "key": "WANDB_API_KEY"}}}
        assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "raylm-shared"}} in pod["volumes"]
    # The submitter pod (K8sJobMode) is non-root and bounded too; KubeRay supplies its command.
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["securityContext"]["runAsNonRoot"] is True and submitter["restartPolicy"] == "Never"
    c = submitter["containers"][0]
    assert "command" not in c and c["securityContext"]["privileged"] is False
    assert c["resources"]["requests"] == c["resources"]["limits"]


def _pods(doc: dict) -> list[dict]:
    cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_render_s3_storage_takes_credentials_from_a_secret(schemas: dict) -> None:
    docs = _render(
        [
            "cluster.storage_path=s3://ckpt/runs",
            "k8s.storage.type=s3",
            "k8s.storage.secret_name=s3-creds",
            "k8s.storage.endpoint_url=http://minio.minio:9000",
        ]
    )
    assert validate(docs, schemas=schemas) == Report()
    for pod in _pods(docs[1]):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio:9000"
        assert not any(v["name"] == "shared" for v in pod["volumes"])
    # No value of any env var looks like a secret: secrets only travel as references.
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_render_raycluster_kind(schemas: dict) -> None:
    docs = _render(["k8s.kind=RayCluster", "k8s.namespace=ml"])
    cluster = _find(docs, "RayCluster")
    assert cluster["metadata"]["namespace"] == "ml" and docs[0]["metadata"]["namespace"] == "ml"
    assert "entrypoint" not in cluster["spec"] and "headGroupSpec" in cluster["spec"]
    assert validate(docs, schemas=schemas) == Report()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["cluster.storage_path=runs"], "is not on the shared volume"),
        (["data.prepared_dir=data/prepared"], "data.prepared_dir 'data/prepared' is not on the shared volume"),
        (["cluster.storage_path=/data/runs", "k8s.storage.type=s3"], "must start with s3://"),
        (["k8s.storage.type=none"], "checkpoints need storage every pod sees"),
        (["cluster.address=ray://laptop:10001"], "leave its own cluster"),
    ],
)
def test_render_refuses_configs_that_cannot_run(overrides: list[str], expected: str) -> None:
    with pytest.raises(UserError) as err:
        _render(overrides)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_render_gcs_ft_redis_takes_the_password_from_a_secret(schemas: dict) -> None:
    ft = ["k8s.gcs_ft=redis", "k8s.redis_address=redis.ray:6379", "k8s.redis_password_secret=redis-auth"]
    for kind in ("RayJob", "RayCluster"):
        docs = _render([*ft, f"k8s.kind={kind}"])
        assert validate(docs, schemas=schemas) == Report()
        doc = _find(docs, kind)
        cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert cluster["gcsFaultToleranceOptions"] == {
            "redisAddress": "redis.ray:6379",
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
        }
        # KubeRay sets RAY_REDIS_ADDRESS / REDIS_PASSWORD itself and rejects pods that set their own.
        env = {e["name"] for pod in _pods(doc) for e in pod["containers"][0]["env"]}
        assert not env & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}
    no_password = _find(_render(ft[:2]), "RayJob")["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"]
    assert no_password == {"redisAddress": "redis.ray:6379"}


def test_gcs_ft_is_off_by_default_and_checked_in_the_config() -> None:
    assert "gcsFaultToleranceOptions" not in _find(_render(), "RayJob")["spec"]["rayClusterSpec"]
    with pytest.raises(UserError, match="k8s.gcs_ft redis needs k8s.redis_address"):
        _render(["k8s.gcs_ft=redis"])
    with pytest.raises(UserError, match="only used with k8s.gcs_ft: redis"):
        _render(["k8s.redis_address=redis:6379"])


def test_resource_name_fits_kuberay_rayjob_limit() -> None:
    cfg = load_config(None, ["trainer.run_name=" + "a" * 80])
    assert len(k8s_render.resource_name(cfg)) == 47
    with pytest.raises(UserError, match="k8s.name"):
        load_config(None, ["k8s.name=" + "a" * 48])


def test_resource_name_is_dns1035() -> None:
    cfg = load_config(None, ["trainer.run_name=9_Big.Run"])
    assert k8s_render.resource_name(cfg) == "raylm-9-big-run"


def test_render_cli_writes_valid_yaml(tmp_path: Path, crds: Path) -> None:
    from raylm.cluster.cli import k8s_app

    out = tmp_path / "job.yaml"
    res = CliRunner().invoke(
        k8s_app, ["render", str(REPO / "configs/cluster-cpu.yaml"), "trainer.max_steps=50", "-o", str(out), "--crds", str(crds)]
    )
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    assert yaml.safe_load(docs[0]["data"]["cluster-cpu.yaml"])["trainer"]["max_steps"] == 50


def test_crds_from_env_and_a_clear_error_without(monkeypatch: pytest.MonkeyPatch, crds: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYLM_KUBERAY_CRDS", str(crds))
    assert ("ray.io/v1", "RayJob") in load_crds()
    monkeypatch.delenv("RAYLM_KUBERAY_CRDS")
    monkeypatch.setenv("RAYLM_KUBECTL", str(tmp_path / "no-kubectl"))  # kubectl that is not there
    with pytest.raises(UserError, match="no KubeRay CRD schemas: pass --crds DIR"):
        load_crds()
    with pytest.raises(UserError, match="CRD folder not found"):
        load_crds(tmp_path / "missing")


def test_apply_pipes_the_manifest_to_kubectl_and_follows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crds: Path) -> None:
    # No Kubernetes API server here: a stand-in kubectl records its arguments and stdin, and
    # answers `get rayjob` with a RayJob that goes Running -> Complete/SUCCEEDED.
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/calls\n'
        f'if [ "$1" = apply ]; then cat > {tmp_path}/applied; echo "rayjob.ray.io/raylm created"; exit 0; fi\n'
        f'n=$(wc -l < {tmp_path}/calls)\n'
        'if [ "$n" -lt 3 ]; then echo "Running RUNNING"; else echo "Complete SUCCEEDED"; fi\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("RAYLM_KUBECTL", str(fake))
    docs = _render()
    k8s_kubectl.apply(k8s_render.to_yaml(docs), namespace="ml")
    assert list(yaml.safe_load_all((tmp_path / "applied").read_text())) == docs
    assert k8s_kubectl.follow_rayjob("raylm", "ml", poll_s=0.01) == "SUCCEEDED"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "apply -f - -n ml"
    assert calls[1].startswith("get rayjob raylm -o jsonpath=") and calls[1].endswith("-n ml")
