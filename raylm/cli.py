"""The `raylm` command line: a thin typer app over each component's `main`."""

from __future__ import annotations

import os
from typing import Any

import typer

from raylm._cli import command_started, setup_logging, user_errors
from raylm.cluster.cli import jobs_app, k8s_app, submit_cmd
from raylm.errors import UserError
from raylm.trainers.downstream_cli import predict_cmd
from raylm.tuning.cli import tune_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train language models on Ray: embedded locally or on a cluster.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train or inspect tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs: every key, its value, default and description.")
app.add_typer(config_app, name="config")

OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. trainer.max_steps=20 trainer.optimizer.lr=1e-3")
ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded Ray).")


VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Ray's and transformers' messages on the console too.")


def _run_log(cfg: Any) -> str:
    """<run dir>/ray.log: Ray's and the libraries' messages (raylm._cli.setup_logging)."""
    from raylm.trainers.driver import local_run_dir

    return os.path.join(local_run_dir(cfg), "ray.log")


def _load(config: str, overrides: list[str] | None, command: str | None = None):
    """The config; with `command`, its inputs checked as that command uses them (preflight)."""
    from raylm.config import load_config

    cfg = load_config(config, overrides or [])
    if command:
        from raylm.preflight import preflight

        preflight(cfg, command)
    return cfg


def _load_overlapped(config: str, overrides: list[str] | None, command: str):
    """(config, checked): `_load`, the slow part of the preflight left running beside Ray's start;
    `checked()` waits for it (raising its UserError) and goes first inside `connect`."""
    from raylm.preflight import preflight_overlapped

    cfg = _load(config, overrides)
    return cfg, preflight_overlapped(cfg, command)


@app.command()
@user_errors
def prepare(config: str, overrides: list[str] = OVERRIDES, force: bool = typer.Option(False, help="Rebuild even if up to date."),
            address: str = ADDRESS, verbose: bool = VERBOSE) -> None:
    """Read, clean, tokenize and pack a corpus into Parquet shards + manifest.json."""
    from raylm.cluster import connect
    from raylm.datasets.prepare import prepare as run_prepare
    from raylm.datasets.report import print_manifest

    cfg, checked = _load_overlapped(config, overrides, "prepare")
    setup_logging(verbose, _run_log(cfg))
    with connect(cfg.cluster, address):
        checked()
        print_manifest(run_prepare(cfg.data, task=cfg.trainer.task, force=force), cfg.data.prepared_dir)


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(config: str, overrides: list[str] = OVERRIDES, address: str = ADDRESS, verbose: bool = VERBOSE) -> None:
    """Train a byte-level BPE tokenizer on a streamed sample of the corpus."""
    from raylm.cluster import connect
    from raylm.datasets.prepare import ensure_tokenizer, resolve_source

    cfg = _load(config, overrides, command="tokenizer")
    setup_logging(verbose, _run_log(cfg))
    if cfg.trainer.task == "seq2seq":  # a joint tokenizer over both sides of the pairs (no Ray needed)
        from raylm.datasets.task_prepare import seq2seq_tokenizer

        return typer.echo(f"tokenizer: {seq2seq_tokenizer(cfg.data)}")
    with connect(cfg.cluster, address):
        typer.echo(f"tokenizer: {ensure_tokenizer(cfg.data, cfg.trainer.task, resolve_source(cfg.data))}")


@app.command()
@user_errors
def train(config: str, overrides: list[str] = OVERRIDES, address: str = ADDRESS, verbose: bool = VERBOSE) -> None:
    """Train (or resume the run of the same trainer.run_name) and export an HF model."""
    from raylm.cluster import connect
    from raylm.trainers.driver import train as run_train

    cfg, checked = _load_overlapped(config, overrides, "train")
    setup_logging(verbose, _run_log(cfg))
    with connect(cfg.cluster, address):
        checked()
        summary = run_train(cfg, started_at=command_started())
    typer.echo(f"[raylm] run: {summary['run_dir']}\n[raylm] exported model: {summary['export_dir']}")


@app.command("rejects")
@user_errors
def rejects_cmd(config: str, overrides: list[str] = OVERRIDES, reason: str = typer.Option(None, help="Only this reason."),
                limit: int = typer.Option(20, help="Rows to show.")) -> None:
    """Show rows that `prepare` dropped (the rejects ledger), with file, line and reason."""
    from raylm.datasets.report import print_rejects

    print_rejects(_load(config, overrides).data.prepared_dir, reason, limit)


@config_app.command("show")
@user_errors
def config_show(config: str = typer.Argument(None, help="A YAML recipe (omit it to see the defaults)."),
                overrides: list[str] = OVERRIDES) -> None:
    """The resolved config, section by section: each key with its value, default and description."""
    from raylm.config import describe_config, load_config

    if config and "=" in config and not os.path.exists(config):  # `raylm config show trainer.max_steps=5`
        config, overrides = None, [config, *(overrides or [])]
    typer.echo(describe_config(load_config(config, overrides or [])))


@app.command("export")
@user_errors
def export_cmd(run_dir: str,
               checkpoint: str = typer.Option("last", "--checkpoint", help="last, best (by the run's metric) or a "
                                              "checkpoint path."),
               dtype: str = typer.Option(None, "--dtype", help="Cast floating weights: fp32, bf16 or fp16."),
               out: str = typer.Option(None, "--out", help="Output directory (default: RUN_DIR/export)."),
               max_shard_gb: float = typer.Option(5.0, "--max-shard-gb", help="Largest safetensors file; bigger "
                                                  "models get several files and an index.")) -> None:
    """Consolidate a checkpoint (sharded FSDP or full) into a `from_pretrained` directory + tokenizer."""
    from raylm.trainers.export import main as run_export

    res = run_export(run_dir, checkpoint, dtype, out, max_shard_gb)
    typer.echo(f"[raylm] {res['checkpoint']} -> {res['export_dir']}")


@app.command("eval")
@user_errors
def eval_cmd(model_dir: str, config: str = typer.Option(None, "--config", help="Config whose prepared data to use."),
             prepared: str = typer.Option(None, "--prepared", help="Prepared data directory (overrides --config)."),
             split: str = "validation", max_batches: int = typer.Option(None, help="Evaluate at most N batches."),
             input_file: str = typer.Option(None, "--input", help="Score this raw file instead (any task: text/JSONL/"
                                            "CSV/TSV/Parquet for LMs and classifiers, CoNLL, SQuAD, parallel text), "
                                            "read with the model's tokenizer.")) -> None:
    """Perplexity (language models), accuracy/F1 (classifiers) or the task's metric of an HF directory, on a
    prepared split or a raw file (--input)."""
    from raylm.datasets.prepare import load_manifest
    from raylm.tasks.corpus_eval import classify, perplexity

    if input_file:  # every task: raylm.tasks.downstream_files picks the task's per-file module
        from raylm.tasks.downstream_files import evaluate_file

        return _echo_metrics(evaluate_file(model_dir, input_file))

    prepared_dir = prepared or (_load(config, []).data.prepared_dir if config else None)
    if not prepared_dir:
        raise UserError("eval needs prepared data: pass --config CONFIG or --prepared DIR")
    manifest = load_manifest(prepared_dir)
    if manifest.get("task") in ("token-classification", "question-answering", "seq2seq"):
        raise UserError(f"{manifest['task']} models are scored on a raw labelled file",
                        hint=f"raylm eval {model_dir} --input FILE (e.g. the config's data.validation_source)")
    if manifest.get("nsp"):  # BERT pretraining pairs: MLM loss and NSP accuracy
        from raylm.tasks.nsp_files import evaluate_prepared

        res = evaluate_prepared(model_dir, prepared_dir, manifest, split, max_batches=max_batches)
    elif manifest.get("task") == "sequence-classification":
        res = classify(model_dir, prepared_dir, manifest, split, pad_id=manifest.get("pad_id") or 0)
    else:
        res = perplexity(model_dir, prepared_dir, manifest, split, max_batches=max_batches)
    for k, v in res.items():
        typer.echo(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


@app.command("generate")
@user_errors
def generate_cmd(model_dir: str, prompt: str = typer.Option("", help="Text to continue (seq2seq: to translate or summarize)."),
                 max_new_tokens: int = typer.Option(None, help="Longest output (default: 60; seq2seq: the model's)."),
                 temperature: float = 0.7, seed: int = 0,
                 top_p: float = typer.Option(0.9, help="Nucleus sampling: draw from the tokens of this much probability."),
                 no_repeat_ngram: int = typer.Option(3, help="No n-gram of this many tokens twice (0: off)."),
                 num_beams: int = typer.Option(None, help="seq2seq: beams (default: the model's generation_config)."),
                 length_penalty: float = typer.Option(None, help="seq2seq: beam length penalty (default: the model's).")) -> None:
    """Sample text from an exported causal LM, or translate/summarize with a seq2seq model (beam search)."""
    from raylm.tasks.corpus_eval import generate

    if os.path.isfile(os.path.join(model_dir, "config.json")):
        from raylm.tasks.seq2seq import generate_text, is_encoder_decoder

        if is_encoder_decoder(model_dir):
            return typer.echo(generate_text(model_dir, prompt, num_beams, length_penalty, max_new_tokens))
    typer.echo(generate(model_dir, prompt, max_new_tokens or 60, temperature, top_p=top_p,
                        no_repeat_ngram_size=no_repeat_ngram, seed=seed)[0])


@app.command("report")
@user_errors
def report_cmd(run_dir: str) -> None:
    """Loss curves (PNG) and a summary table of a run."""
    from raylm.trainers.report import report

    res = report(run_dir)
    typer.echo(res["table"])
    typer.echo(f"loss curves: {res['png']}")


@app.command()
@user_errors
def run(config: str = typer.Argument("configs/demo.yaml"), overrides: list[str] = OVERRIDES, address: str = ADDRESS,
        prompt: str = typer.Option("Return the", help="Prompt of the generated sample."),
        verbose: bool = VERBOSE) -> None:
    """The main job: prepare -> train -> evaluate -> generate a sample -> report."""
    from raylm.main import main

    cfg, checked = _load_overlapped(config, overrides, "run")
    setup_logging(verbose, _run_log(cfg))
    main(cfg, address=address, prompt=prompt, checked=checked)


# Sub-commands owned by other components, registered explicitly: an import error fails loudly
# instead of making a command vanish.
app.add_typer(k8s_app, name="k8s")
app.add_typer(jobs_app, name="jobs")
app.command("submit")(user_errors(submit_cmd))
app.command("tune")(user_errors(tune_cmd))
app.command("predict")(user_errors(predict_cmd))


def _echo_metrics(res: dict) -> None:
    for k, v in res.items():
        typer.echo(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")

if __name__ == "__main__":
    app()
