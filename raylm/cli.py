"""The `raylm` command line: a thin typer app over each component's `main`.

Every command is in COMMANDS at the bottom of this file, sub-commands included; the options they share and the
config loader are in `raylm.cli_options`; `raylm._cli.user_errors` (on each command where it is defined) turns a
UserError into its lines and exit code 2. Lazy imports below are the ones that would load torch, transformers,
Ray or pyarrow when `raylm --help` runs (`tests/unit/test_cli_table.py` holds the CLI's import to that).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import typer

from raylm._cli import command_started, setup_logging, user_errors
from raylm.cli_options import CONFIG, CONFIG_HELP, OVERRIDES, RAY_ADDRESS, VERBOSE, Group, build, load, renamed
from raylm.cluster import connect
from raylm.cluster.cli import apply_cmd, list_cmd, logs_cmd, render_cmd, status_cmd, stop_cmd, submit_cmd, validate_cmd
from raylm.config import describe_config
from raylm.datasets.report import print_manifest, print_rejects
from raylm.errors import UserError
from raylm.main import main as run_main
from raylm.serving.cli import predict_cmd
from raylm.serving.report import report
from raylm.trainers.driver import local_run_dir
from raylm.trainers.driver import train as run_train
from raylm.tuning.cli import tune_cmd


def _run_log(cfg: Any) -> str:
    """<run dir>/ray.log: Ray's and the libraries' messages (raylm._cli.setup_logging)."""
    return os.path.join(local_run_dir(cfg), "ray.log")


@user_errors
def run_cmd(config: str = typer.Argument("configs/demo.yaml", help=CONFIG_HELP), overrides: list[str] = OVERRIDES,
            address: str = RAY_ADDRESS, prompt: str = typer.Option("Return the", help="Prompt of the generated sample."),
            verbose: bool = VERBOSE) -> None:
    """The main job: prepare -> train -> evaluate -> generate a sample -> report."""
    cfg, checked = load(config, overrides, "run", overlap=True)
    setup_logging(verbose, _run_log(cfg))
    run_main(cfg, address=address, prompt=prompt, checked=checked)


@user_errors
def prepare_cmd(config: str = CONFIG, overrides: list[str] = OVERRIDES,
                force: bool = typer.Option(False, help="Rebuild even if up to date."), address: str = RAY_ADDRESS,
                verbose: bool = VERBOSE) -> None:
    """Read, clean, tokenize and pack a corpus into Parquet shards + manifest.json."""
    from raylm.tasks.registry import prepare_data

    cfg, checked = load(config, overrides, "prepare", overlap=True)
    setup_logging(verbose, _run_log(cfg))
    with connect(cfg.cluster, address):
        checked()
        print_manifest(prepare_data(cfg.data, cfg.trainer.task, force), cfg.data.prepared_dir)


@user_errors
def tokenizer_train(config: str = CONFIG, overrides: list[str] = OVERRIDES, address: str = RAY_ADDRESS,
                    verbose: bool = VERBOSE) -> None:
    """Train the task's tokenizer (a byte-level BPE for corpora) on a streamed sample of the data."""
    from raylm.tasks.registry import get_task

    cfg = load(config, overrides, "tokenizer")
    setup_logging(verbose, _run_log(cfg))
    task = get_task(cfg.trainer.task)
    with connect(cfg.cluster, address):
        typer.echo(f"tokenizer: {task.train_tokenizer(cfg.data)}")


@user_errors
def train_cmd(config: str = CONFIG, overrides: list[str] = OVERRIDES, address: str = RAY_ADDRESS,
              verbose: bool = VERBOSE) -> None:
    """Train (or resume the run of the same trainer.run_name) and export an HF model."""
    cfg, checked = load(config, overrides, "train", overlap=True)
    setup_logging(verbose, _run_log(cfg))
    with connect(cfg.cluster, address):
        checked()
        summary = run_train(cfg, started_at=command_started())
    typer.echo(f"[raylm] run: {summary['run_dir']}\n[raylm] exported model: {summary['export_dir']}")


@user_errors
def eval_cmd(model_dirs: list[str] = typer.Argument(..., metavar="MODEL_DIR",
                                                    help="Exported model directories (a base model, an adapter "
                                                    "directory, a merged export). Several: compared on --input."),
             config: str = typer.Option(None, "--config", help="Config whose prepared data to use."),
             prepared: str = typer.Option(None, "--prepared", help="Prepared data directory (overrides --config)."),
             split: str = "validation", max_batches: int = typer.Option(None, help="Evaluate at most N batches."),
             input_file: str = typer.Option(None, "--input", help="Score this raw file instead (any task: text/JSONL/"
                                            "CSV/TSV/Parquet for LMs and classifiers, CoNLL, SQuAD, parallel text), "
                                            "read with the model's tokenizer."),
             report_prefix: str = typer.Option("eval_compare", "--report", help="Several models: write the "
                                               "comparison to PREFIX.json and PREFIX.md."),
             task: str = typer.Option(None, "--task", help="With --input: score the model(s) as this task, not their "
                                      "own (e.g. a pretrained causal LM beside its instruction-tuned version: --task "
                                      "sft; a model without a chat template is prompted with ChatML as text).")) -> None:
    """Perplexity (language models), accuracy/F1 (classifiers) or the task's metric of an HF directory, on a
    prepared split or a raw file (--input). Several models of one task (`raylm eval A B ... --input FILE`: a
    base model, its adapters, a merged export) are scored on the same file and compared in one table: each metric
    per model, its delta to the first model and which way is better; also written as JSON and Markdown (--report)."""
    from raylm.datasets.prepare import load_manifest
    from raylm.serving.dispatch import evaluate_file, evaluate_prepared

    if len(model_dirs) > 1:  # several models: one table on one file (raylm.serving.compare)
        from raylm.serving import compare

        if config or prepared or not input_file:
            raise UserError(f"comparing {len(model_dirs)} models takes --input FILE (a raw file each model is "
                            "scored on)" + (", not --config/--prepared" if config or prepared else ""),
                            hint="raylm eval A B --input FILE; a prepared split scores one model: raylm eval MODEL "
                                 "--config C")
        table = compare.evaluate(model_dirs, input_file, lambda line: typer.echo(f"[raylm] {line}", err=True), task)
        typer.echo(compare.to_text(table))
        json_path, md_path = compare.write(table, report_prefix)
        return typer.echo(f"comparison written to {json_path} and {md_path}")

    (model_dir,) = model_dirs
    if input_file:  # every task: the export's task scores the file
        return _echo_metrics(evaluate_file(model_dir, input_file, task))

    prepared_dir = prepared or (load(config, [], "eval").data.prepared_dir if config else None)
    if not prepared_dir:
        raise UserError("eval needs prepared data: pass --config CONFIG or --prepared DIR")
    res = evaluate_prepared(model_dir, prepared_dir, load_manifest(prepared_dir), split, max_batches)
    _echo_metrics(res)


@user_errors
def generate_cmd(model_dir: str, prompt: str = typer.Option("", help="Text to continue (seq2seq: to translate or summarize)."),
                 max_new_tokens: int = typer.Option(None, help="Longest output (default: 60; seq2seq: the model's)."),
                 temperature: float = 0.7, seed: int = 0,
                 top_p: float = typer.Option(0.9, help="Nucleus sampling: draw from the tokens of this much probability."),
                 no_repeat_ngram: int = typer.Option(3, help="No n-gram of this many tokens twice (0: off)."),
                 num_beams: int = typer.Option(None, help="seq2seq: beams (default: the model's generation_config)."),
                 length_penalty: float = typer.Option(None, help="seq2seq: beam length penalty (default: the model's).")) -> None:
    """Sample text from an exported causal LM, or translate/summarize with a seq2seq model (beam search)."""
    from raylm.serving.dispatch import generate  # the task modules import torch
    from raylm.tasks.base import GenerateOptions

    typer.echo(generate(model_dir, prompt, GenerateOptions(max_new_tokens, temperature, top_p, no_repeat_ngram, seed,
                                                           num_beams, length_penalty)))


@user_errors
def export_cmd(run_dir: str,
               checkpoint: str = typer.Option("last", "--checkpoint", help="last, best (by the run's metric) or a "
                                              "checkpoint path."),
               dtype: str = typer.Option(None, "--dtype", help="Cast floating weights: fp32, bf16 or fp16."),
               output: str = typer.Option(None, "--output", "-o", help="Output directory (default: RUN_DIR/export)."),
               out: str = typer.Option(None, "--out", hidden=True, help="Old spelling of --output."),
               max_shard_gb: float = typer.Option(5.0, "--max-shard-gb", help="Largest safetensors file; bigger "
                                                  "models get several files and an index."),
               merge: bool = typer.Option(False, "--merge", help="An adapter run (model.adapter): the adapter merged "
                                          "into its base, one whole model directory (default: the adapter "
                                          "directory, which names its base).")) -> None:
    """Consolidate a checkpoint (sharded FSDP or full) into a `from_pretrained` directory + tokenizer."""
    from raylm.serving.export import main as run_export  # torch

    res = run_export(run_dir, checkpoint, dtype, renamed(output, out, "--output", "--out", " of raylm export"),
                     max_shard_gb, merge)
    typer.echo(f"[raylm] {res['checkpoint']} -> {res['export_dir']}")


@user_errors
def report_cmd(run_dir: str) -> None:
    """Loss curves (PNG) and a summary table of a run."""
    res = report(run_dir)
    typer.echo(res["table"])
    typer.echo(f"loss curves: {res['png']}")


@user_errors
def rejects_cmd(config: str = CONFIG, overrides: list[str] = OVERRIDES,
                reason: str = typer.Option(None, help="Only this reason."),
                limit: int = typer.Option(20, help="Rows to show.")) -> None:
    """Show rows that `prepare` dropped (the rejects ledger), with file, line and reason."""
    print_rejects(load(config, overrides, "rejects").data.prepared_dir, reason, limit)


@user_errors
def config_show(config: str = typer.Argument(None, help="A YAML recipe (omit it to see the defaults)."),
                overrides: list[str] = OVERRIDES) -> None:
    """The resolved config, section by section: each key with its value, default and description."""
    if config and "=" in config and not os.path.exists(config):  # `raylm config show trainer.max_steps=5`
        config, overrides = None, [config, *(overrides or [])]
    typer.echo(describe_config(load(config, overrides, "config")))


def _echo_metrics(res: dict) -> None:
    for k, v in res.items():
        typer.echo(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


# ---------------------------------------------------------------- the command table


# Every command of `raylm`, sub-commands included (`raylm --help` lists the groups after the commands). Each
# function is wrapped by user_errors once, where it is defined.
COMMANDS: dict[str, Callable[..., Any] | Group] = {
    "run": run_cmd,
    "prepare": prepare_cmd,
    "tokenizer": Group("Train a tokenizer.", {"train": tokenizer_train}),
    "train": train_cmd,
    "tune": tune_cmd,
    "eval": eval_cmd,
    "predict": predict_cmd,
    "generate": generate_cmd,
    "export": export_cmd,
    "report": report_cmd,
    "rejects": rejects_cmd,
    "config": Group("Inspect configs: every key, its value, default and description.", {"show": config_show}),
    "submit": submit_cmd,
    "jobs": Group("Ray Jobs on a running cluster: list, status, logs, stop.",
                  {"list": list_cmd, "status": status_cmd, "logs": logs_cmd, "stop": stop_cmd}),
    "k8s": Group("KubeRay manifests: render, validate, apply.",
                 {"render": render_cmd, "validate": validate_cmd, "apply": apply_cmd}),
}

app = build(COMMANDS, add_completion=False, pretty_exceptions_enable=False,
            help="Train language models on Ray: embedded locally or on a cluster.")

if __name__ == "__main__":
    app()
