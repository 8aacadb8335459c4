"""`raylm prepare` side by side with its bounds, in alternating rounds, JSON into benchmarks/results/.

1. tokens/s of `raylm prepare` (the CLI in a subprocess, embedded Ray, Ray Data actor pool; the time
   the command reports, and its whole wall time beside it) against the physical bound: the same tokenizer's
   `encode_batch` over the same text in one process using all cores, no Ray (target >= 0.8).
2. tokens/s against Hugging Face `datasets` doing read + tokenize + pack with
   `.map(batched=True, num_proc=2)` (target >= 1.5x); skipped where `datasets` is not installed.
3. peak resident memory of `prepare` (driver and every Ray process together) on a corpus 10x
   larger (issue: 1 GB vs 100 MB; target <= 1.25x).

Each measurement runs in its own process; a sampler sums the RSS of that process tree and its CPU
seconds. On a loaded, shared machine wall time means nothing: compare CPU seconds per MB (and
tokens per CPU second) instead, which the results carry too.

Throughput runs in rounds (`--repeats`, default 3), each side once a round in a rotated order; the
ratios are taken within a round and their median reported (each round's too).

    python benchmarks/bench_prepare.py --throughput-mb 200 --memory-mb 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _corpus import build_corpus, iter_texts  # noqa: E402
from _extras import require  # noqa: E402

WORK = Path(os.environ.get("RAYLM_BENCH_DIR", "/tmp/raylm-bench"))
BLOCK = 64


# ------------------------------------------------------------------ the measured runs (child side)


def run_bound(corpus: Path, tok_dir: str) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # all cores, the Rust thread pool
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # what prepare's workers call
    tokens, seconds, batch = 0, 0.0, []
    for text in iter_texts(corpus):
        batch.append(text)
        if len(batch) == 1024:
            tokens, seconds = _encode(encode, batch, tokens, seconds)
            batch = []
    if batch:
        tokens, seconds = _encode(encode, batch, tokens, seconds)
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds_self": _CPU[0],
            "note": "encode time only (wall and CPU): reading JSON excluded"}


_CPU = [0.0]  # process CPU seconds (all threads) inside encode calls


def _encode(encode, batch: list[str], tokens: int, seconds: float) -> tuple[int, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = encode(batch, add_special_tokens=False)
    seconds += time.perf_counter() - t0
    _CPU[0] += time.process_time() - c0
    return tokens + sum(len(e.ids) for e in out), seconds


def run_raylm(corpus: Path, tok_dir: str, out: Path) -> dict:
    """`raylm prepare` as a user runs it: the CLI, the embedded Ray with its defaults (dashboard, one
    tokenizer actor per core of this machine), a config file naming the corpus and the tokenizer."""
    cfg = out / "prepare.yaml"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        "data:\n"
        f"  source: {corpus}\n"
        f"  prepared_dir: {out / 'prepared'}\n"
        f"  block_size: {BLOCK}\n"
        f"  tokenizer: {{path: {tok_dir}}}\n"
        "  progress_seconds: 30\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "raylm.cli", "prepare", str(cfg), "--force"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    print(p.stdout, flush=True)
    if p.returncode:
        raise SystemExit(f"raylm prepare failed (exit {p.returncode})")
    m = json.loads((out / "prepared" / "manifest.json").read_text())
    tokens = sum(m["splits"][s]["tokens_in"] for s in ("train", "validation"))
    return {"tokens": tokens, "seconds": m["seconds"], "command_wall_s": round(wall, 2),
            "tokens_per_s_command": round(tokens / wall),
            "rows_in": m["rows_in"], "rows_kept": m["rows_kept"], "rejected": m["rejected"],
            "shards": sum(len(m["splits"][s]["files"]) for s in m["splits"]),
            "note": "`python -m raylm.cli prepare` in a subprocess; 'seconds' is the time the command reports "
                    "(read, clean, dedup, tokenize, pack, write shards); command_wall_s adds Python and Ray "
                    "start-up, the tokenizer check and the exit"}


def run_hf(corpus: Path, tok_dir: str, out: Path) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    eos = tok.eos_token_id
    files = sorted(str(p) for p in corpus.glob("*.jsonl"))

    def tokenize(batch: dict) -> dict:
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group(batch: dict) -> dict:
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = len(flat) // BLOCK * BLOCK
        return {"input_ids": [flat[i: i + BLOCK] for i in range(0, n, BLOCK)]}

    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(out / "cache"))
    tokenized = ds.map(tokenize, batched=True, num_proc=2, remove_columns=ds.column_names)
    packed = tokenized.map(group, batched=True, num_proc=2, remove_columns=tokenized.column_names)
    packed.to_parquet(str(out / "hf.parquet"))
    seconds = time.perf_counter() - t0
    import pyarrow.compute as pc

    lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    tokens = pc.sum(lengths).as_py() - len(tokenized)  # without the EOS, as the others count
    return {"tokens": tokens, "seconds": seconds, "rows": len(packed),
            "note": "load_dataset(json) + map(tokenize) + map(group) + to_parquet, num_proc=2, fresh cache"}


# ------------------------------------------------------------------ the parent: sampler + report


def _tree_sample(pid: int, cpu: dict[int, float]) -> int:
    """RSS of the process tree now; records each process's CPU seconds so far into `cpu`."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
        except psutil.NoSuchProcess:
            pass
    return total


def measure(kind: str, corpus: Path, tok_dir: str) -> dict:
    """Run one measurement in a child process; sample the RSS of its whole process tree."""
    out = WORK / f"out-{kind}-{corpus.name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)  # a fresh cache and output every run
    res = WORK / f"result-{kind}-{corpus.name}.json"
    res.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, str(corpus), tok_dir, str(out), str(res)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(cmd, env=env)
    peak, stop, cpu = [0], threading.Event(), {}

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_sample(proc.pid, cpu))
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    stop.set()
    t.join()
    if rc != 0 or not res.is_file():
        raise SystemExit(f"{kind} on {corpus} failed (exit {rc})")
    r = json.loads(res.read_text())
    # CPU seconds of the whole tree (start-up included): robust to other load on a shared machine.
    cpu_s = r.get("cpu_seconds_self") or sum(cpu.values())
    r.update(cpu_seconds=round(cpu_s, 1), tokens_per_cpu_s=round(r["tokens"] / max(1e-9, cpu_s)))
    r.update(peak_rss_mib=round(peak[0] / 2**20, 1), tokens_per_s=round(r["tokens"] / r["seconds"]),
             corpus_mib=round(sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 2**20, 1))
    r["cpu_s_per_mb"] = round(cpu_s / max(1e-9, r["corpus_mib"] * 1.048576), 3)
    print(f"[bench] {kind:6s} {corpus.name}: {r['tokens_per_s']:,} tokens/s over {r['seconds']:.1f}s, "
          f"{r['tokens_per_cpu_s']:,} tokens per CPU second, peak RSS {r['peak_rss_mib']:,} MiB", flush=True)
    return r


def train_tokenizer(corpus: Path) -> str:
    from itertools import islice

    from raylm.datasets.tokenizers import train_bpe

    tok_dir = WORK / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_bpe(islice(iter_texts(corpus), 5000), tok_dir, vocab_size=4096)
    return str(tok_dir)


def _has_hf_datasets() -> bool:
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


RATIOS = {  # name: (raylm's key, the other side, its key)
    "raylm_vs_bound": ("tokens_per_s", "bound", "tokens_per_s"),
    "raylm_vs_hf": ("tokens_per_s", "hf", "tokens_per_s"),
    # Per CPU second (the whole process tree, start-up included): what a shared machine skews least.
    "raylm_vs_bound_per_cpu_s": ("tokens_per_cpu_s", "bound", "tokens_per_cpu_s"),
    # The whole command (Python and Ray start-up included) against the HF side's in-process time.
    "raylm_command_vs_hf": ("tokens_per_s_command", "hf", "tokens_per_s"),
    "raylm_vs_hf_per_cpu_s": ("tokens_per_cpu_s", "hf", "tokens_per_cpu_s"),
}


def throughput(corpus: Path, tok_dir: str, repeats: int = 3) -> dict:
    """`repeats` rounds of bound, raylm and HF, each round in a rotated order. This machine's speed drifts
    by tens of percent within minutes (the bound alone, back to back: 17.4 s then 21.2 s), so one run of
    each side, minutes apart, says little: each round's ratios are taken within the round, and the result
    is their median."""
    kinds = ["bound", "raylm"] + (["hf"] if _has_hf_datasets() else [])
    rounds = []
    for i in range(repeats):
        order = kinds[i % len(kinds):] + kinds[: i % len(kinds)]
        rounds.append({k: measure(k, corpus, tok_dir) for k in order} | {"order": order, "loadavg": os.getloadavg()})
        print(f"[bench] round {i + 1}/{repeats}: " + ", ".join(
            f"{name} {v}" for name, spec in RATIOS.items() if (v := _ratio(rounds[-1], *spec))), flush=True)
    out = {"corpus_mib": rounds[0]["raylm"]["corpus_mib"], "repeats": repeats, "rounds": rounds,
           "target_vs_bound": 0.8, "target_vs_hf": 1.5, "loadavg_after": os.getloadavg()}
    for name, spec in RATIOS.items():
        vals = [v for r in rounds if (v := _ratio(r, *spec)) is not None]
        out[name] = round(statistics.median(vals), 3) if vals else None
        out[name + "_each"] = vals
    if "hf" not in kinds:
        out["hf_datasets"] = {"skipped": "Hugging Face `datasets` is not installed here"}
    return out


def _ratio(rnd: dict, ours: str, other: str, key: str) -> float | None:
    return round(rnd["raylm"][ours] / rnd[other][key], 3) if other in rnd else None


def main() -> None:
    require("datasets")  # the HF side
    ap = argparse.ArgumentParser()
    ap.add_argument("--throughput-mb", type=int, default=200)
    ap.add_argument("--memory-mb", type=int, nargs=2, default=[100, 1000])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="keep the last throughput figures")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of bound, raylm and HF (ratios: their median)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    corpus = build_corpus(WORK / f"corpus-{args.throughput_mb}mb", args.throughput_mb << 20)
    tok_dir = train_tokenizer(corpus)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": load0},
                     "block_size": BLOCK, "tokenizer": "byte-level BPE, vocab 4096 (raylm.datasets.tokenizers)"}
    path = HERE / "results" / "bench_prepare.json"
    if args.skip_throughput:
        results["throughput"] = json.loads(path.read_text())["throughput"]
    else:
        results["throughput"] = throughput(corpus, tok_dir, args.repeats)
    if not args.skip_memory:
        small, large = (build_corpus(WORK / f"corpus-{mb}mb", mb << 20) for mb in args.memory_mb)
        s, big = measure("raylm", small, tok_dir), measure("raylm", large, tok_dir)
        results["memory"] = {"small": s, "large": big, "ratio": round(big["peak_rss_mib"] / s["peak_rss_mib"], 3),
                             "target_ratio": 1.25}
    results["machine"]["loadavg_end"] = os.getloadavg()
    if "memory" not in results and path.is_file():  # keep the last memory figures
        old = json.loads(path.read_text())
        if "memory" in old:
            results["memory"] = old["memory"]
            results["memory"]["from_earlier_run_with_loadavg"] = old["machine"].get("loadavg_end")
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results["throughput"].items() if k != "rounds"}))
    if "memory" in results:
        print(f"[bench] memory: {results['memory']['ratio']}x (target <= 1.25)")
    print(f"[bench] wrote {path}")


def child() -> None:
    kind, corpus, tok_dir, out, res = sys.argv[2:7]
    fn = {"bound": lambda: run_bound(Path(corpus), tok_dir), "raylm": lambda: run_raylm(Path(corpus), tok_dir, Path(out)),
          "hf": lambda: run_hf(Path(corpus), tok_dir, Path(out))}[kind]
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(res).write_text(json.dumps(fn()))


if __name__ == "__main__":
    child() if sys.argv[1:2] == ["--child"] else main()
