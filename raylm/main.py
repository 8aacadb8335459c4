"""The main job, one call: prepare -> train (2 workers) -> evaluate -> generate -> report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from raylm.config import RootConfig


def main(cfg: RootConfig, address: str | None = None, prompt: str = "Return the",
         checked: Callable[[], None] | None = None) -> dict:
    from raylm.cluster import connect
    from raylm.datasets.prepare import load_manifest
    from raylm.serving.report import report
    from raylm.tasks.corpus_eval import generate, perplexity
    from raylm.trainers.driver import train

    t0 = time.time()
    with connect(cfg.cluster, address):
        if checked:  # the preflight's slow checks, run beside Ray's start (raylm.preflight.preflight_overlapped)
            checked()
        summary = train(cfg)
    manifest = load_manifest(cfg.data.prepared_dir)
    ev = perplexity(summary["export_dir"], cfg.data.prepared_dir, manifest)
    # Three draws, not one: a single sample of a small model is luck either way.
    samples = generate(summary["export_dir"], prompt, max_new_tokens=48, seed=cfg.trainer.seed, draws=3)
    rep = report(summary["run_dir"])
    out = {"validation": ev, "sample": samples[0], "samples": samples, "loss_png": rep["png"],
           "export_dir": summary["export_dir"],
           "run_dir": summary["run_dir"], "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(summary["run_dir"], "main.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"\n[raylm] validation perplexity: {ev['perplexity']:.2f} (loss {ev['loss']:.4f} nats/token, "
          f"{ev['nats_per_char']:.4f} nats/char)")
    print("[raylm] samples (temperature 0.7, top-p 0.9):\n" + "\n".join(f"  {s!r}" for s in samples))
    print(rep["table"])
    print(f"[raylm] loss curves: {rep['png']}\n[raylm] model: {summary['export_dir']}  "
          f"(AutoModelForCausalLM.from_pretrained)\n[raylm] done in {out['seconds']:.0f}s")
    return out
