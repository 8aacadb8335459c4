"""`raylm k8s validate` against the real KubeRay v1.7 CRDs (../shared/kuberay/crds): what KubeRay
accepts passes (warnings at most), what it rejects fails with exit 2 and one line per problem.

The accepted manifests are shaped like KubeRay's own samples (ray-operator/config/samples): the
four that an earlier validate rejected although KubeRay takes them (generateName, a worker group
without min/maxReplicas, a custom submitter without an entrypoint, num-gpus without a GPU limit).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raylm.cluster import k8s_render
from raylm.cluster._schema import check, with_defaults
from raylm.cluster.cli import k8s_app
from raylm.cluster.k8s_validate import Report, validate
from raylm.config import load_config

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^.+\[doc \d+ \w+/\S+\]: [\w.\[\]/-]+: .+$")


def _render(overrides: list[str] | None = None) -> list[dict]:
    return k8s_render.render(load_config(REPO / "configs/cluster-cpu.yaml", overrides), "cluster-cpu.yaml")


def _find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


def _cli(tmp_path: Path, crds: Path, docs: list[dict], *flags: str) -> tuple[int, list[str], list[str]]:
    """Exit code, error lines and warning lines of `raylm k8s validate` on `docs`."""
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    res = CliRunner().invoke(k8s_app, ["validate", str(path), "--crds", str(crds), *flags])
    lines = res.output.splitlines()
    errors = [l.removeprefix("error: ") for l in lines if l.startswith("error: ")]
    warnings = [l.removeprefix("warning: ") for l in lines if l.startswith("warning: ")]
    return res.exit_code, errors, warnings


# --- manifests KubeRay v1.7 accepts -------------------------------------------------------------

_IMAGE = "rayproject/ray:2.46.0"


def _pod(name: str, **container: object) -> dict:
    return {"spec": {"containers": [{"name": name, "image": _IMAGE, **container}]}}


def _cluster_spec() -> dict:
    return {
        "rayVersion": "2.46.0",
        "headGroupSpec": {"rayStartParams": {}, "template": _pod("ray-head")},
        "workerGroupSpecs": [
            {"replicas": 1, "minReplicas": 1, "maxReplicas": 5, "groupName": "small-group",
             "rayStartParams": {}, "template": _pod("ray-worker")}
        ],
    }


def _sample_job(**spec: object) -> dict:
    """ray-job.sample.yaml, trimmed."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rayjob-sample"},
        "spec": {"entrypoint": "python /home/ray/samples/sample_code.py", "rayClusterSpec": _cluster_spec(), **spec},
    }


def _generate_name() -> dict:
    job = _sample_job()
    job["metadata"] = {"generateName": "rayjob-sample-", "labels": {"kueue.x-k8s.io/queue-name": "user-queue"}}
    return job


def _no_min_max() -> dict:
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "raycluster-mini"},
               "spec": _cluster_spec()}
    group = cluster["spec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]
    return cluster


def _custom_submitter() -> dict:
    """ray-job.custom-submitter-...: K8sJobMode, the submitter's own command, no entrypoint."""
    command = ["ray", "job", "submit", "--address", "http://$(RAY_DASHBOARD_ADDRESS)",
               "--submission-id", "$(RAY_JOB_SUBMISSION_ID)", "--", "python", "-c", "import ray; ray.init()"]
    job = _sample_job(submissionMode="K8sJobMode", submitterPodTemplate=_pod("my-submitter", command=command))
    job["spec"]["submitterPodTemplate"]["spec"]["restartPolicy"] = "Never"
    del job["spec"]["entrypoint"]
    return job


def _gpus_without_limit() -> dict:
    job = _sample_job()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": "1"}
    return job


@pytest.mark.parametrize("make", [_generate_name, _no_min_max, _custom_submitter], ids=lambda f: f.__name__.strip("_"))
def test_kuberay_accepts_so_validate_passes(make, tmp_path: Path, crds: Path) -> None:
    code, errors, warnings = _cli(tmp_path, crds, [make()])
    assert (code, errors, warnings) == (0, [], [])
    code, _, _ = _cli(tmp_path, crds, [make()], "--strict")
    assert code == 0


def test_gpus_advertised_without_a_limit_warn_and_strict_fails(tmp_path: Path, crds: Path) -> None:
    code, errors, warnings = _cli(tmp_path, crds, [_gpus_without_limit()])
    assert (code, errors) == (0, [])
    assert len(warnings) == 1 and "workerGroupSpecs[0].rayStartParams.num-gpus: Ray is told of 1 GPU(s)" in warnings[0]
    code, errors, warnings = _cli(tmp_path, crds, [_gpus_without_limit()], "--strict")
    assert code == 2 and warnings == []
    assert len(errors) == 1 and errors[0].endswith("but no container has a GPU limit: Ray will schedule GPU work on pods without GPUs")


def test_defaults_are_applied_before_required_fields(schemas: dict) -> None:
    spec = schemas[("ray.io/v1", "RayCluster")]
    body = {k: v for k, v in _no_min_max().items() if k != "metadata"}
    group = with_defaults(body, spec)["spec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 2**31 - 1)
    assert check(with_defaults(body, spec), spec) == []
    # A required field without a default is still missing.
    del body["spec"]["workerGroupSpecs"][0]["groupName"]
    assert check(with_defaults(body, spec), spec) == [("spec.workerGroupSpecs[0].groupName", "required field is missing")]


def test_null_fields_are_pruned_then_defaulted_like_the_api_server(schemas: dict) -> None:
    job = _sample_job(submissionMode=None)
    assert validate([job], schemas=schemas) == Report()


def test_replicas_outside_min_max_is_a_warning_kuberay_clamps(schemas: dict) -> None:
    job = _sample_job()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 9
    report = validate([job], schemas=schemas)
    assert report.errors == [] and len(report.warnings) == 1
    assert "replicas: 9 is outside [minReplicas 1, maxReplicas 5]: KubeRay runs 5" in report.warnings[0]


# --- manifests KubeRay rejects ------------------------------------------------------------------

def _job() -> dict:
    return copy.deepcopy(_find(_render(), "RayJob"))


def _typo(d: dict) -> None:
    d["spec"]["shutdownAfterJobFinish"] = d["spec"].pop("shutdownAfterJobFinishes")


def _bad_enum(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["autoscalerOptions"] = {"upscalingMode": "Fast"}


def _int_param(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 4


def _no_head(d: dict) -> None:
    del d["spec"]["rayClusterSpec"]["headGroupSpec"]


def _min_gt_max(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=3, maxReplicas=1)


def _mode(d: dict) -> None:
    d["spec"]["submissionMode"] = "K8sMode"


def _name(d: dict) -> None:
    d["metadata"]["name"] = "Raylm_Job"


def _ttl(d: dict) -> None:
    d["spec"]["shutdownAfterJobFinishes"] = False


def _gpu(d: dict) -> None:
    c = d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    c["resources"] = {"requests": {"cpu": "1", "nvidia.com/gpu": 1}, "limits": {"cpu": "1"}}


def _gpu_param(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = "2"


def _image(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.9.0-py311"


def _deep_typo(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}


def _wrong_type(d: dict) -> None:
    d["spec"]["backoffLimit"] = "twice"


def _auth(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"


def _api(d: dict) -> None:
    d["apiVersion"] = "ray.io/v2"


def _long_name(d: dict) -> None:
    d["metadata"]["name"] = "raylm-" + "a" * 46


def _long_prefix(d: dict) -> None:
    d["metadata"]["generateName"] = "raylm-" + "a" * 41 + "-"
    del d["metadata"]["name"]


def _no_entrypoint(d: dict) -> None:
    del d["spec"]["entrypoint"]  # the rendered submitter has no command of its own


def _sidecar_template(d: dict) -> None:
    d["spec"]["submissionMode"] = "SidecarMode"


def _interactive_retries(d: dict) -> None:
    d["spec"].update(submissionMode="InteractiveMode", backoffLimit=2)
    del d["spec"]["submitterPodTemplate"]


def _worker(d: dict) -> dict:
    return d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _head_container(d: dict) -> dict:
    return d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _no_worker_container(d: dict) -> None:
    _worker(d)["template"]["spec"]["containers"] = []


def _params_and_resources(d: dict) -> None:
    _worker(d).update(rayStartParams={"num-cpus": "2"}, resources={"CPU": "2"})


def _redis_env_without_ft(d: dict) -> None:
    _head_container(d)["env"].append({"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"})


def _ft_and_own_password(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"] = {"redisAddress": "redis:6379"}
    _head_container(d)["env"].append({"name": "REDIS_PASSWORD", "value": "x"})


def _old_ray_with_token(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["rayVersion"] = "2.46.0"


def _gpu_no_shm(d: dict) -> None:
    c = _worker(d)["template"]["spec"]["containers"][0]
    c["resources"] = {"requests": {"cpu": "1", "nvidia.com/gpu": 1}, "limits": {"cpu": "1", "nvidia.com/gpu": 1}}
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/dev/shm"]


def _group_name(d: dict) -> None:
    _worker(d)["groupName"] = "Small_Group"


def _ft_without_address(d: dict) -> None:
    d["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"] = {}


BROKEN = [
    (_typo, "spec.shutdownAfterJobFinish: unknown field (did you mean 'shutdownAfterJobFinishes'?)"),
    (_bad_enum, "spec.rayClusterSpec.autoscalerOptions.upscalingMode: 'Fast' is not one of"),
    (_int_param, "spec.rayClusterSpec.workerGroupSpecs[0].rayStartParams.num-cpus: expected a string, got integer 4"),
    (_no_head, "spec.rayClusterSpec.headGroupSpec: required field is missing"),
    (_min_gt_max, "spec.rayClusterSpec.workerGroupSpecs[0]: minReplicas (3) is above maxReplicas (1)"),
    (_mode, "spec.submissionMode: 'K8sMode' is not one of"),
    (_name, "metadata.name: 'Raylm_Job' is not a DNS-1035 label"),
    (_long_name, "metadata.name: 'raylm-aaaa" + "a" * 42 + "' has 52 characters: KubeRay accepts at most 47 for a RayJob"),
    (_long_prefix, "metadata.generateName: 'raylm-" + "a" * 41 + "-' + 5 generated characters exceeds the 47"),
    (_ttl, "spec.ttlSecondsAfterFinished: KubeRay rejects it without spec.shutdownAfterJobFinishes: true"),
    (_gpu, "containers[0].resources.limits: GPUs are requested (nvidia.com/gpu: 1) but not limited"),
    (_deep_typo, "containers[0].resource: unknown field (did you mean 'resources'?)"),
    (_wrong_type, "spec.backoffLimit: expected an integer, got string"),
    (_auth, "spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"),
    (_api, "apiVersion: no CRD schema for ray.io/v2 RayJob"),
    (_no_entrypoint, "spec.entrypoint: required with submissionMode K8sJobMode"),
    (_sidecar_template, "spec.submitterPodTemplate: KubeRay's SidecarMode does not support it"),
    (_interactive_retries, "spec.backoffLimit: KubeRay rejects retries (2) with InteractiveMode"),
    (_no_worker_container, "workerGroupSpecs[0].template.spec.containers: KubeRay needs at least one container"),
    (_params_and_resources, "workerGroupSpecs[0].resources: KubeRay rejects resources both here and in rayStartParams (num-cpus)"),
    (_redis_env_without_ft, "containers[0].env: RAY_REDIS_ADDRESS turns GCS fault tolerance on: KubeRay rejects it"),
    (_ft_and_own_password, "containers[0].env: REDIS_PASSWORD: KubeRay sets it from gcsFaultToleranceOptions"),
    (_old_ray_with_token, "spec.rayClusterSpec.rayVersion: authOptions.mode token needs Ray 2.52.0 or later"),
]


@pytest.mark.parametrize("breakage, expected", BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN])
def test_broken_manifest_fails_readably(breakage, expected: str, schemas: dict) -> None:
    doc = _job()
    breakage(doc)
    report = validate([doc], schemas=schemas, origin="broken.yaml")
    assert report.errors, "the broken manifest passed"
    assert any(expected in line for line in report.errors), report.errors
    label = doc["metadata"].get("name") or doc["metadata"]["generateName"]
    for line in report.errors:
        assert LINE.match(line), line
        assert line.startswith(f"broken.yaml[doc 0 RayJob/{label}]: ")


WARNED = [
    (_gpu_param, "rayStartParams.num-gpus: Ray is told of 2 GPU(s) but no container has a GPU limit"),
    (_image, "containers[0].image: image has Ray 2.9.0 but rayVersion is 2.60.0"),
    (_gpu_no_shm, "containers[0].volumeMounts: no volume at /dev/shm"),
    (_group_name, "groupName: 'Small_Group' is not a DNS-1123 label"),
    (_ft_without_address, "gcsFaultToleranceOptions.redisAddress: not set"),
]


@pytest.mark.parametrize("change, expected", WARNED, ids=[w[0].__name__.strip("_") for w in WARNED])
def test_raylm_opinions_are_warnings(change, expected: str, schemas: dict) -> None:
    doc = _job()
    change(doc)
    report = validate([doc], schemas=schemas, origin="w.yaml")
    assert report.errors == [], report.errors
    assert [w for w in report.warnings if expected in w], report.warnings
    assert all(LINE.match(w) for w in report.warnings)


def test_group_name_is_an_error_under_a_network_policy(schemas: dict) -> None:
    doc = _job()
    _group_name(doc)
    doc["spec"]["rayClusterSpec"]["networkPolicy"] = {}
    assert any("groupName: 'Small_Group' is not a DNS-1123 label" in e for e in validate([doc], schemas=schemas).errors)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (_typo, "spec.shutdownAfterJobFinish: unknown field"),
        (_wrong_type, "spec.backoffLimit: expected an integer, got string"),
        (_min_gt_max, "minReplicas (3) is above maxReplicas (1)"),
        (_no_head, "spec.rayClusterSpec.headGroupSpec: required field is missing"),
        (_name, "metadata.name: 'Raylm_Job' is not a DNS-1035 label"),
        (_mode, "spec.submissionMode: 'K8sMode' is not one of"),
    ],
    ids=["unknown-field", "wrong-type", "min-gt-max", "no-head", "bad-name", "bad-mode"],
)
def test_validate_cli_fails_broken_with_exit_2_one_line(breakage, expected: str, tmp_path: Path, crds: Path) -> None:
    doc = _job()
    breakage(doc)
    code, errors, _ = _cli(tmp_path, crds, [doc])
    assert code == 2
    hits = [e for e in errors if expected in e]
    assert len(hits) == 1, errors
    assert LINE.match(hits[0]) and hits[0].startswith(f"{tmp_path / 'manifest.yaml'}[doc 0 RayJob/")


def test_validate_cli_exit_code_and_lines(tmp_path: Path, crds: Path) -> None:
    good, bad = _job(), _job()
    _typo(bad)
    _min_gt_max(bad)
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([_find(_render(), "ConfigMap"), bad]))
    runner = CliRunner()
    ok = runner.invoke(k8s_app, ["validate", str(tmp_path / "good.yaml"), "--crds", str(crds)])
    assert ok.exit_code == 0, ok.output
    assert "warning" not in ok.output
    res = runner.invoke(k8s_app, ["validate", str(tmp_path / "bad.yaml"), "--crds", str(crds)])
    assert res.exit_code == 2
    errors = [l for l in res.output.splitlines() if l.startswith("error: ")]
    assert len(errors) == 3  # the typo, the ttl it orphans, min > max
    assert all(f"{tmp_path / 'bad.yaml'}[doc 1 RayJob/raylm]: " in e for e in errors)
