"""Across nodes for real: a head and two worker nodes (`ray start`, three raylets on this
machine) with distinct custom resources; a 2-worker TorchTrainer (gloo DDP) whose workers must
land on different nodes and whose checkpoint lands in storage every node sees.

The driver runs in its own process (this file run as a script): the pytest process may hold
another Ray already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)


def _loop(config: dict) -> None:
    import tempfile

    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    torch.manual_seed(ctx.get_world_rank())  # different data per rank: DDP must reconcile it
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(config["steps"]):
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
    nodes: list = [None] * ctx.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    weights = [torch.zeros(1, 4) for _ in range(ctx.get_world_size())]
    dist.all_gather(weights, model.module.weight.detach().contiguous())
    metrics = {"nodes": nodes, "in_sync": all(torch.equal(weights[0], w) for w in weights), "loss": loss.item()}
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if ctx.get_world_rank() == 0:
            torch.save(model.module.state_dict(), os.path.join(d, "model.pt"))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def _driver(address: str, storage: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address=address, log_to_driver=False)
    slots = {n["NodeID"]: sorted(k for k in n["Resources"] if k.startswith("node_")) for n in ray.nodes() if n["Alive"]}
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"steps": 3},
        # One `trainslot` per worker node and one per training worker: two workers, two nodes.
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1, "trainslot": 1}),
        run_config=RunConfig(name="multinode", storage_path=storage),
    )
    result = trainer.fit()
    print("RESULT " + json.dumps({"metrics": result.metrics, "checkpoint": result.checkpoint.path, "slots": slots}))


def test_ddp_workers_on_two_nodes_checkpoint_in_shared_storage(tmp_path: Path) -> None:
    from raylm.cluster._localray import LocalRay

    storage = tmp_path / "shared"
    with LocalRay(num_cpus=1) as cluster:
        cluster.add_worker(num_cpus=1, resources={"node_a": 1, "trainslot": 1})
        cluster.add_worker(num_cpus=1, resources={"node_b": 1, "trainslot": 1})
        cluster.wait_nodes(3)
        env = cluster.env
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        res = subprocess.run(
            [sys.executable, __file__, cluster.gcs_address, str(storage)],
            capture_output=True, text=True, env=env, timeout=480,
        )
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert res.returncode == 0 and line, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    nodes = out["metrics"]["nodes"]
    assert len(nodes) == 2 and nodes[0] != nodes[1], nodes
    assert sorted(out["slots"][n][0] for n in nodes) == ["node_a", "node_b"]  # the two worker nodes
    assert out["metrics"]["in_sync"] is True  # DDP all-reduced across the nodes
    ckpt = Path(out["checkpoint"])
    assert ckpt.is_relative_to(storage / "multinode") and (ckpt / "model.pt").is_file()
    import torch

    assert torch.load(ckpt / "model.pt")["weight"].shape == (1, 4)


if __name__ == "__main__":
    _driver(sys.argv[1], sys.argv[2])
