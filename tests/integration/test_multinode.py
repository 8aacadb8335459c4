"""Across nodes for real: a head and two worker nodes (`ray start`, three raylets on this
machine) with distinct custom resources; a 2-worker TorchTrainer (gloo DDP) whose workers must
land on different nodes and whose checkpoint lands in storage every node sees.

The driver runs in its own process (this file run as a script): the pytest process may hold
another Ray already.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.localray import LocalRay
from support.observers import observers_override, sample_log_spec

pytestmark = [pytest.mark.long, pytest.mark.timeout(1500)]  # `bash scripts/test.sh -m long`


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


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRay, Path]]:
    """A head (with the Jobs API) and two worker nodes with one `trainslot` each, and a directory
    every node sees."""
    shared = tmp_path_factory.mktemp("shared")
    with LocalRay(num_cpus=2, dashboard=True) as cluster:
        cluster.add_worker(num_cpus=2, resources={"node_a": 1, "trainslot": 1})
        cluster.add_worker(num_cpus=2, resources={"node_b": 1, "trainslot": 1})
        yield cluster, shared


def test_ddp_workers_on_two_nodes_checkpoint_in_shared_storage(three_nodes: tuple[LocalRay, Path]) -> None:
    cluster, shared = three_nodes
    storage = shared / "toy"
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


# --------------------------------------------------------------------------- raylm's own job across nodes

REPO = Path(__file__).resolve().parents[2]


def _write_job(tmp: Path, shared: Path) -> Path:
    """The job's config in `tmp`; its corpus (once), prepared shards and runs in `shared` (every test of the
    module trains on the same shards: prepared by the first `raylm train`, up to date for the others)."""
    words = "the model reads tokens and predicts the next one while the loss goes down".split()
    if not (shared / "corpus.txt").exists():
        with open(shared / "corpus.txt", "w") as f:
            for i in range(120):
                f.write(f"Document {i}: " + " ".join(words[(i + j) % len(words)] for j in range(30)) + "\n\n")
    cfg = tmp / "across.yaml"
    cfg.write_text(
        f"cluster: {{storage_path: {shared}/runs}}\n"
        f"data: {{source: {shared}/corpus.txt, prepared_dir: {shared}/prepared, block_size: 32, "
        "tokenizer: {vocab_size: 320}}\n"
        "model: {n_layer: 1, n_embd: 32, n_head: 2}\n"
        "trainer: {run_name: across, batch_size: 4, max_steps: 8, log_every: 1, "
        "schedule: {type: constant, warmup_steps: 1}, scaling: {num_workers: 2, resources_per_worker: {trainslot: 1}}, "
        "eval: {every: 4, batches: 1}, checkpoint: {every: 4}}\n"
        "tracking: {wandb: {mode: disabled}}\n"
    )
    return cfg


def _ledger(base: Path, rank: int) -> tuple[list[dict[str, str]], list[tuple[int, int, list[int]]]]:
    """(headers, rows) of one rank's sample ledger (complete lines: a worker may be writing it)."""
    from testkit import ledger_headers

    path = Path(f"{base}.rank{rank}")
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    rows = [(int(e), int(st), [int(i) for i in ids]) for e, st, *ids in (l.split() for l in lines if l and l[0] != "#")]
    return ledger_headers(str(base), rank), rows


def _train_ids(prepared: Path) -> list[int]:
    import pyarrow.parquet as pq

    manifest = json.loads((prepared / "manifest.json").read_text())
    return sorted(i for f in manifest["splits"]["train"]["files"]
                  for i in pq.read_table(prepared / f["path"], columns=["sample_id"]).column("sample_id").to_pylist())


def test_raylm_job_across_nodes_survives_a_dead_driver_and_a_lost_node(three_nodes, tmp_path: Path) -> None:
    """`raylm train --address` with one worker per node; then `raylm submit` of an elastic [1, 2] run whose
    driver is SIGKILLed (`raylm jobs status` names the checkpoint; the resubmitted run resumes from it) and
    whose second node's raylet is SIGKILLed: it finishes on one node, every sample of epoch 0 exactly once."""
    from typer.testing import CliRunner

    from raylm.cli import app
    from raylm.cluster import jobs

    from testkit import is_registered, ledger_headers, wait_job, wait_jobs_api, wait_until

    cluster, shared = three_nodes
    cfg = _write_job(tmp_path, shared)
    env = {**cluster.env, "PYTHONPATH": str(REPO)}
    wait_jobs_api(cluster)

    # ---- 1. `raylm train --address`: prepare on the cluster, 2 workers on 2 nodes, checkpoints in shared storage.
    # The train workers keep a sample ledger (trainer.observers: Ray puts the driver's directory, the repository
    # root, on their Python path).
    ledger = observers_override(sample_log_spec(shared / "ids"))
    res = subprocess.run([sys.executable, "-m", "raylm", "train", str(cfg), ledger, "--address", cluster.gcs_address],
                         capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert res.returncode == 0 and "[raylm] exported model:" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert is_registered(str(shared / "runs" / "across"), "checkpoint_00000008")
    (h0, rows0), (h1, rows1) = _ledger(shared / "ids", 0), _ledger(shared / "ids", 1)
    assert h0[0]["node"] != h1[0]["node"], (h0, h1)  # one worker per node
    ids0, ids1 = {i for r in rows0 for i in r[2]}, {i for r in rows1 for i in r[2]}
    assert ids0 and ids1 and not ids0 & ids1  # Ray Data streamed each its own share (data.sharding auto: split)

    # ---- 2. `raylm submit` an elastic run; its driver dies after the first checkpoint
    train_ids = _train_ids(shared / "prepared")
    steps = len(train_ids) // 4 + 2  # past the end of epoch 0 even on one worker
    ids, run_dir = shared / "ids-elastic", shared / "runs" / "elastic"
    overrides = ["trainer.run_name=elastic", "trainer.scaling.num_workers=[1, 2]", f"trainer.max_steps={steps}",
                 "trainer.checkpoint.every=3", "trainer.eval.every=3", observers_override(sample_log_spec(ids))]
    # PYTHONPATH: the job's workers import raylm and tests.support.observers (the ledger) from the repository.
    submit = dict(address=cluster.dashboard_url, command="python -m raylm train", env={"PYTHONPATH": str(REPO)})
    assert jobs.submit(cfg, overrides, **submit) == 0
    client, job = jobs.client(cluster.dashboard_url), "raylm-elastic"
    wait_until("a first checkpoint", lambda: is_registered(str(run_dir), "checkpoint_00000003"))
    os.kill(int(client.get_job_info(job).driver_info.pid), signal.SIGKILL)  # the driver dies
    wait_job(cluster.dashboard_url, job, timeout_s=300)
    latest = jobs.latest_checkpoint(str(shared / "runs"), "elastic")
    out = CliRunner().invoke(app, ["jobs", "status", job, "--address", cluster.dashboard_url])
    assert out.exit_code == 1 and "FAILED" in out.output, out.output
    assert f"{latest[0]} (step {latest[1]}): a resubmitted run resumes from it" in out.output, out.output

    # ---- 3. submitted again, it resumes there; then the node of rank 1 is lost for good. Under a new submission
    # id: Ray Jobs' monitor of the dead job adopts a job submitted again under its id (JobManager.monitored_jobs)
    # and marks it FAILED once it notices the old supervisor is gone (seen here: "Job supervisor actor died").
    job = "raylm-elastic-2"
    assert jobs.submit(cfg, overrides, submission_id=job, **submit) == 0
    wait_until("the resumed run on 2 workers",
               lambda: len(_ledger(ids, 1)[0]) == 2 and len(_ledger(ids, 1)[1]) > latest[1] + 2)
    assert ledger_headers(str(ids), 0)[1]["resumed_from"] == str(latest[1])  # the resubmitted run's first attempt
    cluster.kill_node(cluster.node_running(int(_ledger(ids, 1)[0][1]["pid"])))  # lost for good
    assert jobs.follow(client, job) == "SUCCEEDED"

    heads0, rows = _ledger(ids, 0)
    assert len(heads0) >= 3 and len(_ledger(ids, 1)[0]) == 2  # the last attempt: one worker
    assert heads0[-1]["node"] != _ledger(ids, 1)[0][1]["node"]  # on the node that survived
    epoch0 = [i for rank in (0, 1) for (e, _s, batch) in _ledger(ids, rank)[1] if e == 0 for i in batch]
    assert len(epoch0) == len(set(epoch0))  # nothing twice...
    assert len(set(train_ids) - set(epoch0)) < 4  # ...nothing missed but the last partial batch (drop_last)


def test_fixed_size_run_waits_for_a_replacement_node_after_a_node_is_lost(three_nodes, tmp_path: Path) -> None:
    """A fixed 2-worker run (one worker per node, two such nodes) whose rank-1 node is SIGKILLed mid-run: the
    failure is charged to max_failures, the run waits until a replacement node joins (Ray Train retries the
    worker group's placement), restarts from the last checkpoint on the survivor and the replacement, and
    completes with every sample of epoch 0 exactly once (data.sharding split: a data position per rank)."""
    from raylm.cluster import jobs

    from testkit import is_registered, ledger_headers, wait_jobs_api, wait_until

    cluster, shared = three_nodes
    if len(cluster.procs) < 3:  # the head and two worker nodes (a trainslot each): an earlier test lost one
        cluster.add_worker(num_cpus=2, resources={"node_c": 1, "trainslot": 1})
    assert len(cluster.procs) == 3
    cfg = _write_job(tmp_path, shared)
    wait_jobs_api(cluster)
    ids, run_dir = shared / "ids-fixed", shared / "runs" / "fixed"
    if not (shared / "prepared" / "manifest.json").exists():  # run alone: the first test prepares them
        res = subprocess.run([sys.executable, "-m", "raylm", "prepare", str(cfg), "--address", cluster.gcs_address],
                             capture_output=True, text=True, env={**cluster.env, "PYTHONPATH": str(REPO)}, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    train_ids = _train_ids(shared / "prepared")
    epoch = len(train_ids) // 8  # steps: 2 workers x 4 rows a step
    assert epoch >= 9, f"{len(train_ids)} training rows: too few to lose a node mid-epoch"
    # Three epochs: the node is lost in the first, with the rest of the run still ahead on any machine.
    overrides = ["trainer.run_name=fixed", "trainer.scaling.num_workers=2", "trainer.scaling.max_failures=2",
                 f"trainer.max_steps={3 * epoch}", "trainer.checkpoint.every=3", "trainer.eval.every=3",
                 observers_override(sample_log_spec(ids))]
    job = "raylm-fixed"
    assert jobs.submit(cfg, overrides, address=cluster.dashboard_url, command="python -m raylm train",
                       env={"PYTHONPATH": str(REPO)}) == 0
    wait_until("a checkpoint and training past it",
               lambda: is_registered(str(run_dir), "checkpoint_00000003") and len(_ledger(ids, 1)[1]) >= 4)
    lost = ledger_headers(str(ids), 1)[0]
    cluster.kill_node(cluster.node_running(int(lost["pid"])))  # one trainslot left: the run cannot go on...
    at_kill = jobs.latest_checkpoint(str(shared / "runs"), "fixed")[1]
    cluster.add_worker(num_cpus=2, resources={"node_d": 1, "trainslot": 1})  # ...until this one joins
    assert jobs.follow(jobs.client(cluster.dashboard_url), job) == "SUCCEEDED"

    heads = [ledger_headers(str(ids), r) for r in (0, 1)]
    assert len(heads[0]) == len(heads[1]) >= 2, heads  # restarted (once, unless a restart failed too): both ranks
    assert len({h[-1]["node"] for h in heads} - {h[0]["node"] for h in heads}) == 1, heads  # on the replacement
    # From the latest checkpoint (or one the ranks had both reported as the node went): at most 3 steps lost.
    assert at_kill <= int(heads[0][1]["resumed_from"]) <= at_kill + 3, (at_kill, heads)
    assert is_registered(str(run_dir), f"checkpoint_{3 * epoch:08d}")
    epoch0 = [i for r in (0, 1) for (e, _s, batch) in _ledger(ids, r)[1] if e == 0 for i in batch]
    assert len(epoch0) == len(set(epoch0))  # nothing twice...
    assert len(set(train_ids) - set(epoch0)) < 8  # ...nothing missed but a last partial round (2 x 4 rows)


if __name__ == "__main__":
    _driver(sys.argv[1], sys.argv[2])
