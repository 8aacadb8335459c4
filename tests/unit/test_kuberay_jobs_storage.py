"""Control logic of Ray Jobs submission and storage resolution, without Ray running."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from raylm.cluster import jobs, storage
from raylm.errors import UserError


def test_job_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, not the Jobs API: ignored
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.resolve_address() == "http://head:8265"
    assert jobs.resolve_address("https://ray.example:443") == "https://ray.example:443"


def test_runtime_env_refuses_secrets() -> None:
    env = jobs.runtime_env("/tmp/wd", {"HF_HOME": "/cache"}, pip=["sentencepiece"])
    assert env == {
        "working_dir": "/tmp/wd",
        "env_vars": {**jobs.BASE_ENV, "HF_HOME": "/cache"},
        "pip": ["sentencepiece"],
    }
    with pytest.raises(UserError) as err:
        jobs.runtime_env("/tmp/wd", {"WANDB_API_KEY": "x", "AWS_SECRET_ACCESS_KEY": "y", "HF_TOKEN": "z", "TOKENIZERS_PARALLELISM": "1"})
    assert len(err.value.problems) == 3 and "looks like a secret" in err.value.problems[0]


def test_exit_code_mirrors_status() -> None:
    assert [jobs.exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING")] == [0, 1, 3, 0]


def test_submission_id_is_stable() -> None:
    assert jobs.submission_id_for("gpt-small") == jobs.submission_id_for("gpt-small") == "raylm-gpt-small"


def test_submit_cli_refuses_secret_env_before_connecting(tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from raylm.cluster.cli import jobs_app, submit_cmd

    app = typer.Typer()
    app.command("submit")(submit_cmd)
    app.add_typer(jobs_app, name="jobs")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: {run_name: t}\n")
    # Port 9 (discard) on 127.0.0.1: nothing listens, so an attempt to connect would fail with
    # a different message; the secret check must come first.
    res = CliRunner().invoke(app, ["submit", str(cfg), "--env", "WANDB_API_KEY=abc", "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2
    assert "env WANDB_API_KEY: looks like a secret" in res.output and "cannot reach" not in res.output
    res = CliRunner().invoke(app, ["jobs", "list", "--address", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "cannot reach the Ray Jobs API at http://127.0.0.1:9" in res.output


def test_storage_local_and_file_uri(tmp_path) -> None:
    fs, path = storage.resolve(str(tmp_path / "runs"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "runs")
    assert storage.resolve(f"file://{tmp_path}/x")[1] == f"{tmp_path}/x"
    assert storage.run_storage(str(tmp_path)) == {"storage_path": str(tmp_path)}


def test_storage_s3_endpoint_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    fs, path = storage.resolve("s3://ckpt/runs/")
    assert isinstance(fs, pafs.S3FileSystem) and path == "ckpt/runs"
    assert fs.region == "eu-west-1"
    kw = storage.run_storage("s3://ckpt/runs")
    assert kw["storage_path"] == "ckpt/runs" and isinstance(kw["storage_filesystem"], pafs.S3FileSystem)


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://b/runs?access_key=AK&secret_key=SK", "credentials in the URL"),
        ("s3:///runs", "name a bucket"),
        ("hdfs://nn/runs", "unsupported scheme hdfs://"),
    ],
)
def test_storage_refuses(uri: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        storage.resolve(uri)
    assert expected in err.value.problems[0]
    assert "SK" not in err.value.problems[0]  # never echo a secret back
