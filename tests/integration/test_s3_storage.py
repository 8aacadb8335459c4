"""Checkpoints in s3:// for real: a local S3-compatible server (moto in server mode, 127.0.0.1)
as Ray Train storage, resolved through raylm.cluster.storage with the endpoint and the
credentials only in the environment -- as a pod gets them from a Secret.

The Ray driver runs in its own process, started with that environment, so that its raylet and
workers inherit it (the pytest process may hold a Ray started without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
BUCKET = "raylm-ckpt"


def _loop(config: dict) -> None:
    import os
    import tempfile

    import ray.train
    import ray.train.torch
    import torch

    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(config["steps"]):
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save({"model": model.module.state_dict(), "step": step}, os.path.join(d, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"step": step, "loss": loss.item()}, checkpoint=checkpoint)


def _driver(storage_path: str) -> None:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raylm.cluster.storage import run_storage

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"steps": 2},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="s3run", checkpoint_config=CheckpointConfig(num_to_keep=1), **run_storage(storage_path)),
    )
    result = trainer.fit()
    print("RESULT " + json.dumps({"checkpoint": result.checkpoint.path, "metrics": result.metrics}))


@pytest.fixture(scope="module")
def s3_env():
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    from support.localray import free_ports

    port = free_ports(1)[0]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # Dummy credentials of the fake server; real ones come from a Kubernetes Secret.
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    yield env, s3
    server.stop()


def test_torchtrainer_checkpoint_lands_in_s3(s3_env, tmp_path: Path) -> None:
    env_vars, s3 = s3_env
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env_vars
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, __file__, f"s3://{BUCKET}/runs"], capture_output=True, text=True, env=env, timeout=480, cwd=tmp_path,
    )
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert res.returncode == 0 and line, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["metrics"]["step"] == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/s3run/").get("Contents", [])]
    states = [k for k in keys if k.endswith("/state.pt")]
    assert len(states) == 1, keys  # num_to_keep=1: the older checkpoint was deleted from the bucket
    assert out["checkpoint"].startswith(f"{BUCKET}/runs/s3run/checkpoint_")
    assert states[0] == f"{out['checkpoint'][len(BUCKET) + 1:]}/state.pt"


if __name__ == "__main__":
    _driver(sys.argv[1])
