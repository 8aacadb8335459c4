"""`raylm predict`: registered by raylm/cli.py's table; the export's task does the work (raylm.serving.dispatch)."""

from __future__ import annotations

import typer

from raylm._cli import user_errors


@user_errors
def predict_cmd(model_dir: str,
                input_file: str = typer.Option(..., "--input", help="Sentences (CoNLL, JSONL {tokens}|{text}), "
                                               "questions (SQuAD JSON, JSONL {id, question, context}), seq2seq "
                                               "sources (JSONL {source|document}, or plain text, one a line), or "
                                               "texts for LMs and classifiers (text/JSONL/CSV/TSV/Parquet)."),
                output: str = typer.Option(..., "--output", help="Where to write the predictions (JSONL)."),
                batch_size: int = typer.Option(None, help="Rows (NER/QA: feature windows) per forward pass "
                                               "(default: the task's, 16 or 32).")) -> None:
    """Tags per token (NER), answer text + character span (QA), the translation/summary (seq2seq), label and
    probabilities (classification), a continuation (causal LM) or the likeliest fills of each mask token
    (masked LM) from an exported model, one JSON line each."""
    from raylm.serving.dispatch import predict_file

    res = predict_file(model_dir, input_file, output, batch_size)
    typer.echo(f"[raylm] {res['task']}: {res['rows']} predictions -> {res['output']}")
