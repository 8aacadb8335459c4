"""FSDP2 benchmarks on CPU (2 workers, gloo, fp32 + AdamW). JSON into benchmarks/results/.

  python benchmarks/bench_fsdp.py memory   # peak RSS per worker: FSDP2 vs DDP on a 0.74B Llama-style model
  python benchmarks/bench_fsdp.py big      # 0.87B (DDP cannot hold it on 24 GiB): 3 FSDP2 steps on 2 workers,
                                           # checkpoint, resume on 1 worker, export, from_pretrained; wall times
  python benchmarks/bench_fsdp.py stall    # checkpoint stall: synchronous full-state save vs sharded async save
  python benchmarks/bench_fsdp.py all [--tiny]   # --tiny: the same paths on a tiny model (a smoke test)

Peak RSS is each worker process's VmHWM (/proc/<pid>/status), polled while the run is alive. Each side
runs with raylm's defaults: FSDP workers return freed buffers of 1 MiB and up to the OS
(`trainer.fsdp.release_host_memory`, raylm.trainers.hostmem; 8.08 -> 7.24 GiB a worker at 0.74B), DDP
workers keep glibc's allocator defaults (with the FSDP setting DDP measured 6.04 instead of 6.25 GiB at
0.33B, at a 40% step-time cost on small models).
DDP is measured on a smaller model (`--ddp-layers`) and extrapolated per parameter to the FSDP model's
size (its memory is linear in the parameter count at a fixed batch): the JSON says so. The big run
saves synchronously (`trainer.fsdp.async_checkpoint=false`): staging its shard for an async write would
need another ~7 GB per worker, more than 24 GiB holds.

Sizes, for this 24 GiB machine: fp32 + AdamW is 16 bytes a parameter (weights, gradients, two moments).
2 DDP workers each hold all of it (32 B/param on the machine: at most ~0.6B fits); 2 FSDP2 workers hold
half each (16 B/param on the machine). The issue's ~1B (memory) and ~1.3B (big) were tried first: 16 and
21 GB of state alone, plus ~1 GB of runtime per worker, and with an async checkpoint's staging copy, passed
Ray's memory monitor threshold (95% of the machine) and the runs were killed. So memory uses 0.74B and big
0.87B (DDP would need ~30 GB), both with synchronous sharded checkpoints. Since FSDP workers release freed
buffers, `memory --size 1.0b` (1.005B) fits too: 9.25 GiB a worker, 0.494 of DDP extrapolated (18.72 GiB).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # tests/testkit.py, tests/support
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

RESULTS = os.path.join(os.path.dirname(__file__), "results")
VOCAB, BLOCK = 32000, 128
# Llama-style, hidden 2048, MLP 4x (tasks.py), tied embeddings: 10 layers 0.74B, 12 layers 0.87B, 14 layers 1.0B.
SIZES = {"0.74b": (10, 2048, 16), "0.87b": (12, 2048, 16), "1.0b": (14, 2048, 16), "ddp": (4, 2048, 16),
         "stall": (8, 1024, 16),
         "tiny": (2, 64, 4)}


def _data(root: str, tiny: bool) -> tuple[str, dict]:
    from testkit import write_synthetic

    d = os.path.join(root, "data")
    vocab = 512 if tiny else VOCAB
    return d, write_synthetic(d, n_train=64, n_val=8, files=2, block_size=BLOCK, vocab=vocab)


def _cfg(data: str, root: str, name: str, size: str, strategy: str, steps: int, workers: int = 2,
         extra: list[str] | None = None):
    from testkit import tiny_config

    n_layer, n_embd, n_head = SIZES[size]
    model = ["model.arch=llama", f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}",
             f"data.block_size={BLOCK}", "data.sharding=stride"]  # the big run resumes on 1 worker
    return tiny_config(data, os.path.join(root, "runs"), "causal-lm", model + (extra or []), run_name=name,
                       scaling={"strategy": strategy, "num_workers": workers}, batch_size=1, max_steps=steps,
                       eval={"every": steps, "batches": 1}, checkpoint={"every": steps}, torch_threads=1,
                       optimizer={"lr": 1e-4}, schedule={"warmup_steps": 0}, log_every=1)


def _params(size: str, vocab: int) -> int:
    n_layer, d, _ = SIZES[size]
    return n_layer * (4 * d * d + 3 * d * 4 * d + 2 * d) + vocab * d + d


class PeakRss:
    """Polls VmHWM of the worker pids named in the sample log's headers while a run is alive."""

    def __init__(self, ids: str, workers: int) -> None:
        self.ids, self.workers, self.peak, self._stop = ids, workers, {}, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            for r in range(self.workers):
                try:
                    heads = [l for l in open(f"{self.ids}.rank{r}") if l.startswith("# pid=")]
                    pid = heads[-1].split()[1].split("=")[1]
                    hwm = next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
                    self.peak[r] = max(self.peak.get(r, 0), int(hwm.split()[1]) * 1024)
                except (OSError, IndexError, StopIteration):
                    pass

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._t.join()
        return {r: round(v / 2**30, 3) for r, v in sorted(self.peak.items())}


def _fit(cfg, manifest: dict, ids: str, workers: int) -> dict:
    from raylm.trainers.driver import build_trainer

    from support.observers import observed, sample_log_spec

    t0, rss = time.time(), PeakRss(ids, workers)  # the ledger names the workers' pids
    result = build_trainer(observed(cfg, sample_log_spec(ids)), manifest=manifest).fit()
    peak = rss.stop()
    if result.error:
        raise result.error
    return {"wall_s": round(time.time() - t0, 1), "peak_rss_gib": peak}


def memory(root: str, tiny: bool, size: str = "0.74b") -> dict:
    data, manifest = _data(root, tiny)
    fsdp_size, ddp_size = ("tiny", "tiny") if tiny else (size, "ddp")
    # Synchronous checkpoints: an async save stages a copy of the shard's weights and optimizer state in CPU
    # memory (+12 bytes a parameter per worker), which is checkpoint memory, not training memory (and with it
    # the 0.74B run was killed by Ray's memory monitor at 9.95 GB a worker).
    sync = ["trainer.fsdp.async_checkpoint=false"]
    fsdp = _fit(_cfg(data, root, "mem-fsdp", fsdp_size, "fsdp", 2, 2, sync), manifest, f"{root}/fsdp.ids", 2)
    ddp = _fit(_cfg(data, root, "mem-ddp", ddp_size, "ddp", 2), manifest, f"{root}/ddp.ids", 2)
    n_fsdp, n_ddp = _params(fsdp_size, manifest["vocab_size"]), _params(ddp_size, manifest["vocab_size"])
    ddp_gib = max(ddp["peak_rss_gib"].values())
    return {"model_params": n_fsdp, "fsdp2": fsdp,
            "ddp_measured": {"model_params": n_ddp, **ddp},
            "ddp_extrapolated_peak_rss_gib": round(ddp_gib * n_fsdp / n_ddp, 2),
            "note": "DDP measured on a smaller model and extrapolated linearly per parameter"
                    if n_ddp != n_fsdp else "same model"}


def big(root: str, tiny: bool) -> dict:
    from transformers import AutoModelForCausalLM

    from raylm.serving.export import main as export

    data, manifest = _data(root, tiny)
    size = "tiny" if tiny else "0.87b"
    sync = ["trainer.fsdp.async_checkpoint=false"]
    out = {"model_params": _params(size, manifest["vocab_size"])}
    out["train_2_workers"] = _fit(_cfg(data, root, "big", size, "fsdp", 3, 2, sync), manifest, f"{root}/big.ids", 2)
    out["resume_1_worker"] = _fit(_cfg(data, root, "big", size, "fsdp", 4, 1, sync), manifest, f"{root}/big.ids", 1)
    t0 = time.time()
    res = export(os.path.join(root, "runs", "big"))
    out["export_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(res["export_dir"])
    out["from_pretrained_s"] = round(time.time() - t0, 1)
    out["exported_params"] = sum(p.numel() for p in model.parameters())
    return out


def _stalls(run_dir: str) -> list[float]:
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["checkpoint_stall_s"] for r in rows if "checkpoint_stall_s" in r]


def stall(root: str, tiny: bool, steps: int = 6) -> dict:
    data, manifest = _data(root, tiny)
    size, every = ("tiny" if tiny else "stall"), ["trainer.checkpoint.every=2", "trainer.eval.every=2"]
    out = {"model_params": _params(size, manifest["vocab_size"])}
    for name, extra in (("full_sync", ["trainer.fsdp.checkpoint=full"]), ("sharded_async", [])):
        fit = _fit(_cfg(data, root, f"stall-{name}", size, "fsdp", steps, 2, every + extra), manifest,
                   f"{root}/{name}.ids", 2)
        s = _stalls(os.path.join(root, "runs", f"stall-{name}"))
        out[name] = {"stall_s_per_save": [round(x, 3) for x in s], "mean_stall_s": round(sum(s) / len(s), 3), **fit}
    out["stall_ratio"] = round(out["full_sync"]["mean_stall_s"] / max(out["sharded_async"]["mean_stall_s"], 1e-6), 1)
    out["target"] = ">= 5x less stall"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["memory", "big", "stall", "all"])
    ap.add_argument("--tiny", action="store_true", help="the same paths on a tiny model (smoke test)")
    ap.add_argument("--size", default="0.74b", choices=["0.74b", "1.0b"],
                    help="memory: the FSDP2 model (1.0b: synchronous saves only, ~20 of 24 GiB)")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1")
    os.makedirs(RESULTS, exist_ok=True)
    for which in (["memory", "big", "stall"] if args.which == "all" else [args.which]):
        load_start = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix=f"bench-fsdp-{which}-") as root:
            run = functools.partial(memory, size=args.size) if which == "memory" else {"big": big, "stall": stall}[which]
            res = {"benchmark": which, "tiny": args.tiny, "cpus": os.cpu_count(), **run(root, args.tiny)}
        res["load"] = {"start": load_start, "end": os.getloadavg()}
        size = f"_{args.size}" if which == "memory" and args.size != "0.74b" else ""
        path = os.path.join(RESULTS, f"fsdp_{which}{size}{'_tiny' if args.tiny else ''}.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main()
