"""The main job on a real local Ray: prepare a tiny corpus, train 2 workers (DDP, gloo), checkpoint,
export, resume. Real tokenizer, real transformers GPT-2 built from a config."""

from __future__ import annotations

import json
import os
import random

import pytest

from raylm.config import load_config

WORDS = ("the model reads tokens and predicts the next one while the optimizer lowers the loss "
         "on every step of training with data from many documents").split()


def write_corpus(path, n_docs=400, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            f.write(json.dumps({"text": f"Document {i}: {text}."}) + "\n")


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("mainjob")
    write_corpus(root / "corpus.jsonl")
    overrides = [
        f"data.source={root}/corpus.jsonl", f"data.prepared_dir={root}/prepared", "data.block_size=32",
        "data.tokenizer.vocab_size=320", f"cluster.storage_path={root}/runs", "trainer.run_name=tiny",
        "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "trainer.batch_size=8", "trainer.max_steps=8",
        "trainer.schedule.warmup_steps=2", "trainer.optimizer.lr=3e-3", "trainer.eval.every=4", "trainer.checkpoint.every=4",
        "trainer.eval.batches=2", "trainer.log_every=1", "tracking.wandb.mode=disabled",
    ]
    return root, overrides


def metrics(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_train_checkpoint_export(job):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raylm.trainers.driver import train

    from testkit import read_state

    root, overrides = job
    summary = train(load_config(None, overrides))
    rows = metrics(summary["run_dir"])
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(train_losses) == 8
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses  # it learns
    assert any("val_loss" in r for r in rows)
    ckpts = sorted(d for d in os.listdir(summary["run_dir"]) if d.startswith("checkpoint_0"))
    assert ckpts == ["checkpoint_00000004", "checkpoint_00000008"]
    assert read_state(os.path.join(summary["run_dir"], ckpts[-1])).step == 8
    # The export loads in plain transformers and generates.
    model = AutoModelForCausalLM.from_pretrained(summary["export_dir"])
    tok = AutoTokenizer.from_pretrained(summary["export_dir"])
    out = model.generate(**tok("Document 1:", return_tensors="pt"), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    assert out.shape[1] > 3
    # The saved config is the resolved one, with the overrides in it.
    saved = load_config(os.path.join(summary["run_dir"], "config.yaml"))
    assert saved.trainer.max_steps == 8 and saved.trainer.optimizer.lr == 3e-3



@pytest.mark.long  # two more Train runs (CI's 35 minutes); resuming by run name is also test_resume's, in CI
def test_train_resumes_with_more_steps(job):
    from raylm.trainers.driver import train

    from testkit import read_state

    root, overrides = job
    overrides = overrides + ["trainer.run_name=tiny-resume"]  # its own run, whichever test ran first
    train(load_config(None, overrides))
    # Resume: same run name, more steps -> continues at step 9 from the step-8 checkpoint.
    summary2 = train(load_config(None, overrides + ["trainer.max_steps=12"]))
    steps = [r["step"] for r in metrics(summary2["run_dir"]) if "train_loss" in r]
    assert steps == list(range(1, 13)), steps  # no step repeated, none restarted from zero
    state = read_state(os.path.join(summary2["run_dir"], "checkpoint_00000012"))
    assert state.step == 12 and state.tokens_seen == 12 * 2 * 8 * 32
