"""Failures across nodes, measured: a local cluster of raylets (`ray start`: a head and three worker
nodes with one `trainslot` each, so two workers run on two nodes and one node is spare), the demo
model, and a worker node lost at ~40% and again at ~70% of the run. JSON into benchmarks/results/.

  python benchmarks/bench_failures.py                 # the demo model, 200 steps (a quiet machine)
  python benchmarks/bench_failures.py --steps 24 --tiny   # smoke test

Two ways to lose a node, each in its own run, against one uninterrupted run:
- sigkill: the node dies at once (its `ray start`, raylet and workers SIGKILLed); the run restarts
  from its last checkpoint on the spare node. Target: steps lost <= steps since that checkpoint. A
  checkpoint counts once Ray Train has registered it (the controller collects each worker's report on
  its next poll, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default on a `ray start` cluster);
  one written but not yet registered when the node dies is not used. The bench records both at the
  kill (`written_at_kill`, `registered_at_kill`) and judges against the registered one. The kills
  land mid-interval (at ~40% and ~70% of the steps, moved half a checkpoint interval past a
  checkpoint), as a failure does on average.
- sigterm: as Kubernetes evicts a pod -- the node drained for preemption (`ray drain-node`, what
  KubeRay's autoscaler does; no new work lands there), SIGTERM to its worker, the grace period, then
  SIGKILL. The workers checkpoint at their next step (raylm.trainers.preemption). Target: 0 steps lost.
A replacement node joins after each loss (KubeRay would start a new pod), so the second loss also
finds a spare. Per loss: steps lost, seconds from the kill to the first step of the restarted run
(target <= 60 s). Per run: the sample ledger (target: every sample of the epoch exactly once) and the
final validation loss against the uninterrupted run (target: within 1%).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# Shared with the tests: support.localray, support.observers (the sample ledger; the Ray workers import it from
# the working directory, the repo root), and testkit's synthetic data, tiny config and sample-ledger reader.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# The local cluster's head runs with token auth (tests/support/localray.py); this driver presents the token
# only in token mode, which Ray reads when it is imported: set before `import ray`.
os.environ.setdefault("RAY_AUTH_MODE", "token")

RESULTS = os.path.join(os.path.dirname(__file__), "results")
DEMO = ["model.n_layer=4", "model.n_embd=128", "model.n_head=4", "data.block_size=128"]  # configs/demo.yaml
TINY = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "data.block_size=128"]
BATCH = 8
GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds


def _cfg(data: str, runs: str, name: str, steps: int, every: int, model: list[str]):
    from testkit import tiny_config

    return tiny_config(data, runs, "causal-lm", model, run_name=name, batch_size=BATCH, max_steps=steps,
                       log_every=1, torch_threads=1, optimizer={"lr": 1e-3}, schedule={"type": "constant"},
                       scaling={"num_workers": 2, "resources_per_worker": {"trainslot": 1}, "max_failures": 4,
                                "max_preemptions": 4},
                       eval={"every": every, "batches": 4}, checkpoint={"every": every})


def _metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return [r for r in rows if "train_loss" in r]


def _headers(ids: str, rank: int) -> list[dict[str, str]]:
    path = f"{ids}.rank{rank}"
    if not os.path.exists(path):
        return []
    return [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(path) if l.startswith("#")]


def _checkpoints(run_dir: str) -> tuple[int, int]:
    """(latest checkpoint written to storage, latest registered by Ray Train) as steps; 0 if none."""
    from raylm.cluster.jobs import latest_checkpoint

    written = [int(d.rsplit("_", 1)[1]) for d in os.listdir(run_dir)
               if d.startswith("checkpoint_") and os.path.exists(os.path.join(run_dir, d, "state.pt"))]
    latest = latest_checkpoint(os.path.dirname(run_dir), os.path.basename(run_dir))  # what `raylm jobs status` reads
    return max(written, default=0), (latest[1] or 0) if latest else 0


def _lose_node(cluster, ids: str, run_dir: str, how: str) -> dict:
    """Lose the node of rank 1 now; a replacement node joins in the background."""
    pid = int(_headers(ids, 1)[-1]["pid"])
    node, attempts = cluster.node_running(pid), len(_headers(ids, 0))
    step_at_kill = max((r["step"] for r in _metrics(run_dir)), default=0)
    written, registered = _checkpoints(run_dir)
    t_kill = time.time()
    if how == "sigterm":  # as Kubernetes evicts a pod: drained (no new work lands there), SIGTERM, grace, SIGKILL
        cluster.drain(_headers(ids, 1)[-1]["node"], int(GRACE_S))
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + GRACE_S
        while time.time() < deadline and len(_headers(ids, 0)) == attempts:  # until the run restarted
            time.sleep(0.1)
    cluster.kill_node(node)
    threading.Thread(target=lambda: cluster.add_worker(num_cpus=2, resources={"trainslot": 1}), daemon=True).start()
    while len(_headers(ids, 0)) == attempts:  # the restarted run's first header
        time.sleep(0.1)
    resumed_from = int(_headers(ids, 0)[-1]["resumed_from"])
    while not any(r["step"] == resumed_from + 1 and r["time"] > t_kill for r in _metrics(run_dir)):
        time.sleep(0.1)
    first = min(r["time"] for r in _metrics(run_dir) if r["step"] == resumed_from + 1 and r["time"] > t_kill)
    return {"how": how, "step_at_kill": step_at_kill, "written_at_kill": written, "registered_at_kill": registered,
            "resumed_from": resumed_from, "steps_lost": max(0, step_at_kill - resumed_from),
            "steps_since_registered_checkpoint": step_at_kill - registered,
            "seconds_to_training_again": first - t_kill}


def _ledger(ids: str, n_samples: int) -> dict:
    from testkit import read_sample_log

    counts = [0] * n_samples
    for rows in read_sample_log(ids, 2).values():
        for _e, _s, batch in rows:
            for i in batch:
                counts[i] += 1
    return {"once": counts.count(1), "twice_or_more": sum(c > 1 for c in counts), "never": counts.count(0)}


def run(cluster, root: str, data: str, manifest: dict, name: str, steps: int, every: int, model: list[str],
        how: str | None) -> dict:
    from raylm.trainers.driver import build_trainer

    from support.observers import observed, sample_log_spec

    runs, ids = os.path.join(root, "runs"), os.path.join(root, f"{name}.ids")
    run_dir = os.path.join(runs, name)
    trainer = build_trainer(observed(_cfg(data, runs, name, steps, every, model), sample_log_spec(ids)),
                            manifest=manifest)
    out: list = []
    t0 = time.time()
    fit = threading.Thread(target=lambda: out.append(trainer.fit()))
    fit.start()
    losses = []
    for at in ((0.4, 0.7) if how else ()):
        kill_at = int(at * steps) // every * every + every // 2  # mid-interval, as a failure is on average
        while fit.is_alive() and max((r["step"] for r in _metrics(run_dir)), default=0) < kill_at:
            time.sleep(0.05)
        losses.append(_lose_node(cluster, ids, run_dir, how))
    fit.join()
    result = out[0]
    return {"run": name, "losses": losses, "wall_s": time.time() - t0, "final_step": result.metrics["step"],
            "val_loss": result.metrics["val_loss"], "samples": _ledger(ids, manifest["splits"]["train"]["rows"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    ap.add_argument("--tiny", action="store_true", help="a 2x32 model (smoke test)")
    ap.add_argument("--modes", default="sigkill,sigterm")
    ap.add_argument("--out", default=os.path.join(RESULTS, "failures.json"))
    args = ap.parse_args()
    import ray

    from support.localray import LocalRay
    from testkit import write_synthetic

    model = TINY if args.tiny else DEMO
    with tempfile.TemporaryDirectory(prefix="raylm-bench-failures-") as root, LocalRay(num_cpus=2) as cluster:
        for _ in range(3):
            cluster.add_worker(num_cpus=2, resources={"trainslot": 1})
        data = os.path.join(root, "data")
        # One epoch exactly: every sample once is checkable.
        manifest = write_synthetic(data, n_train=args.steps * BATCH * 2, n_val=64, files=8, block_size=128,
                                   vocab=4096)
        ray.init(address=cluster.gcs_address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        base = run(cluster, root, data, manifest, "straight", args.steps, args.every, model, None)
        runs = [run(cluster, root, data, manifest, how, args.steps, args.every, model, how)
                for how in args.modes.split(",")]
        ray.shutdown()
    for r in runs:
        r["val_loss_vs_straight"] = r["val_loss"] / base["val_loss"] - 1
        r["meets_targets"] = {
            "steps_lost": all(l["steps_lost"] <= (0 if l["how"] == "sigterm" else l["steps_since_registered_checkpoint"])
                              for l in r["losses"]),
            "seconds_to_training_again": all(l["seconds_to_training_again"] <= 60 for l in r["losses"]),
            "samples_once": r["samples"]["once"] == manifest["splits"]["train"]["rows"],
            "val_loss_within_1pct": abs(r["val_loss_vs_straight"]) <= 0.01,
        }
    res = {"benchmark": "failures", "straight": base, "runs": runs, "steps": args.steps,
           "checkpoint_every": args.every, "model": "tiny 2x32" if args.tiny else "demo gpt2 4x128",
           "batch_per_worker": BATCH, "block_size": 128, "sigterm_grace_s": GRACE_S,
           "controller_poll_s": float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)),
           "load_avg_1m": os.getloadavg()[0], "cpu_cores": os.cpu_count(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main()
