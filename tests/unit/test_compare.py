"""`raylm eval A B ... --input FILE`'s table (raylm.serving.compare), from result dicts as the tasks'
evaluate_file return them: rows, deltas to the first model, which way is better, labels, mismatched tasks,
the Markdown and JSON written; and the command's refusals that load no model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from raylm.cli import app
from raylm.errors import UserError
from raylm.serving.compare import better, compare, labels, to_markdown, to_text, write

BASE = {"examples": 3, "rejected": 0, "tokens": 40, "loss": 2.0, "perplexity": 7.389, "nats_per_char": 0.5,
        "bits_per_byte": 0.7}
TUNED = {"examples": 3, "rejected": 0, "tokens": 40, "loss": 1.5, "perplexity": 4.4817, "nats_per_char": 0.375,
         "bits_per_byte": 0.55}


def rows(table: dict) -> dict[str, dict]:
    return {r["metric"]: r for r in table["rows"]}


def test_rows_hold_each_models_value_its_delta_to_the_first_and_the_direction() -> None:
    table = compare([("base", {"task": "causal-lm", **BASE}), ("lora", {"task": "causal-lm", **TUNED}),
                     ("merged", {"task": "causal-lm", **BASE, "loss": 2.25})], input_file="held_out.txt")
    assert table["models"] == ["base", "lora", "merged"] and table["baseline"] == "base"
    assert table["task"] == "causal-lm" and table["input"] == "held_out.txt"
    r = rows(table)
    assert r["loss"]["values"] == [2.0, 1.5, 2.25]
    assert r["loss"]["deltas"] == pytest.approx([0.0, -0.5, 0.25])
    assert r["loss"]["better"] == "lower" and r["loss"]["verdicts"] == ["same", "better", "worse"]
    assert r["perplexity"]["deltas"][1] == pytest.approx(4.4817 - 7.389)
    # counts are shown, never given deltas; the task is the table's, not a row
    assert r["examples"] == {"metric": "examples", "kind": "count", "values": [3, 3, 3]}
    assert "deltas" not in r["tokens"] and "task" not in r
    kinds = [row["kind"] for row in table["rows"]]
    assert kinds == sorted(kinds)  # counts first ("count" < "metric"), then the metrics in the first model's order
    assert [row["metric"] for row in table["rows"] if row["kind"] == "metric"] == [
        "loss", "perplexity", "nats_per_char", "bits_per_byte"]


@pytest.mark.parametrize("metric,way", [
    ("loss", "lower"), ("perplexity", "lower"), ("bits_per_byte", "lower"), ("nsp_loss", "lower"),
    ("val_loss", "lower"), ("accuracy", "higher"), ("f1", "higher"), ("exact_match", "higher"), ("bleu", "higher"),
    ("rouge1", "higher"), ("rougeL", "higher"), ("precision", "higher"), ("f1_PER", "higher"),
    ("nsp_accuracy", "higher"), ("val_f1", "higher"), ("answered", "higher"), ("my_score", None),
])
def test_direction_follows_raylms_metric_names(metric: str, way: str | None) -> None:
    assert better(metric) == way


def test_a_higher_is_better_metric_judges_a_rise_better_and_an_unknown_one_is_not_judged() -> None:
    a = {"task": "sequence-classification", "rejected": 0, "accuracy": 0.5, "f1": 0.4, "f1_average": "binary",
         "examples": 10, "my_score": 1.0}
    b = {**a, "accuracy": 0.7, "f1": 0.3, "my_score": 3}
    r = rows(compare([("a", a), ("b", b)]))
    assert r["accuracy"]["verdicts"] == ["same", "better"] and r["f1"]["verdicts"] == ["same", "worse"]
    assert r["my_score"]["better"] is None and r["my_score"]["verdicts"] == [None, None]
    assert r["my_score"]["deltas"] == [0.0, 2.0]  # an integer beside a float: a metric, compared
    assert r["f1_average"]["kind"] == "count" and r["f1_average"]["values"] == ["binary", "binary"]


def test_a_tasks_own_integer_counts_get_no_delta() -> None:
    """sft's eval --input: trained_tokens and generated are counts; answered (a share) and exact_match compare."""
    a = {"task": "sft", "examples": 8, "rejected": 0, "loss": 1.2, "perplexity": 3.3, "trained_tokens": 90,
         "exact_match": 0.25, "answered": 0.5, "generated": 8}
    b = {**a, "loss": 1.0, "trained_tokens": 90, "exact_match": 0.5, "answered": 0.75}
    r = rows(compare([("base", a), ("sft", b)]))
    assert {k for k, row in r.items() if row["kind"] == "count"} == {"examples", "rejected", "trained_tokens",
                                                                     "generated"}
    assert [r[k]["verdicts"][1] for k in ("loss", "perplexity", "exact_match", "answered")] == ["better", "same",
                                                                                                "better", "better"]


def test_only_metrics_every_model_reports_are_compared_the_others_listed() -> None:
    a = {"task": "token-classification", "examples": 4, "f1": 0.5, "f1_PER": 0.4, "f1_LOC": 0.6}
    b = {"task": "token-classification", "examples": 4, "f1": 0.6, "f1_PER": 0.5}
    table = compare([("a", a), ("b", b)])
    assert set(rows(table)) == {"examples", "f1", "f1_PER"}
    assert table["skipped"] == {"f1_LOC": ["a"]}
    assert "not compared (not every model reports it): f1_LOC (a)" in to_text(table)


def test_models_of_different_tasks_are_refused_naming_them() -> None:
    with pytest.raises(UserError) as err:
        compare([("gpt", {"task": "causal-lm", **BASE}), ("cls", {"task": "sequence-classification",
                                                                    "accuracy": 0.5, "examples": 3})])
    assert "different tasks" in str(err.value)
    assert "gpt (causal-lm)" in str(err.value) and "cls (sequence-classification)" in str(err.value)


def test_nothing_to_compare_is_refused() -> None:
    with pytest.raises(UserError, match="at least two models"):
        compare([("a", BASE)])
    with pytest.raises(UserError, match="no numeric metric"):
        compare([("a", {"examples": 3, "loss": 1.0}), ("b", {"examples": 3, "accuracy": 0.5})])


def test_labels_are_basenames_told_apart_by_their_parents() -> None:
    assert labels(["runs/base", "runs/lora/"]) == ["base", "lora"]
    assert labels(["runs/a/export", "runs/b/export", "other"]) == ["a/export", "b/export", "other"]
    assert labels(["x/a/export", "y/a/export"]) == ["x/a/export", "y/a/export"]
    assert labels(["runs/m", "runs/m"]) == ["m", "m#2"]


def test_console_table_is_aligned_with_directions_and_signed_deltas() -> None:
    table = compare([("base", {"task": "causal-lm", **BASE}), ("lora-adapter", {"task": "causal-lm", **TUNED})],
                    input_file="f.txt")
    text = to_text(table)
    lines = text.splitlines()
    assert lines[0] == "task: causal-lm, input: f.txt, baseline: base"
    assert lines[1].split() == ["metric", "better", "base", "lora-adapter", "delta", "lora-adapter"]
    loss = next(line for line in lines if line.startswith("loss "))
    assert loss.split() == ["loss", "lower", "2.0000", "1.5000", "-0.5000", "better"]
    examples = next(line for line in lines if line.startswith("examples"))
    assert examples.split() == ["examples", "3", "3"]
    assert len({line.index("2.0000") for line in lines if "2.0000" in line}) == 1
    # the value columns line up: every row's first value ends where the header's first model name ends
    end = lines[1].index("base") + len("base")
    assert all(line[:end].endswith(v) for line, v in ((loss, "2.0000"), (examples, "3")))
    text.encode("ascii")  # the console table stays ASCII


def test_markdown_and_json_are_written_at_the_prefix(tmp_path) -> None:
    table = compare([("base", {"task": "causal-lm", **BASE}), ("lora", {"task": "causal-lm", **TUNED})],
                    input_file="f.txt")
    json_path, md_path = write(table, str(tmp_path / "out" / "cmp"))
    assert (json_path, md_path) == (str(tmp_path / "out" / "cmp.json"), str(tmp_path / "out" / "cmp.md"))
    assert json.loads(open(json_path).read()) == table
    md = open(md_path, encoding="utf-8").read()
    assert md == to_markdown(table)
    assert "| metric | better | base | lora | delta lora |" in md
    assert "| loss | ↓ lower | 2.0000 | 1.5000 | -0.5000 better |" in md
    assert "| examples |  | 3 | 3 |  |" in md
    header, rule = md.splitlines()[4:6]
    assert header.count("|") == rule.count("|")
    assert write(table, str(tmp_path / "again.json")) == (str(tmp_path / "again.json"), str(tmp_path / "again.md"))


@pytest.mark.parametrize("args,says", [
    (["--config", "configs/demo.yaml"], "comparing 2 models takes --input FILE"),
    (["--prepared", "data/prepared"], "not --config/--prepared"),
    ([], "comparing 2 models takes --input FILE"),
])
def test_several_models_without_an_input_file_exit_2(tmp_path, args: list[str], says: str) -> None:
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "a"), str(tmp_path / "b"), *args])
    assert res.exit_code == 2 and says in res.output, res.output
    assert "Traceback" not in res.output


def test_missing_directories_are_refused_before_any_model_loads(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "a"), str(tmp_path / "nope"), "--input", "f.txt"])
    assert res.exit_code == 2 and f"'{tmp_path / 'nope'}' is not a directory" in res.output, res.output


def test_evaluate_scores_each_directory_through_the_dispatcher_an_adapter_directory_included(tmp_path, monkeypatch):
    """A directory whose task raylm cannot read up front (an adapter directory: no config.json) is left to the
    dispatcher's eval; the exports' task is the table's."""
    import raylm.serving.dispatch as dispatch
    from raylm.serving.compare import evaluate

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"raylm_task": "causal-lm"}))
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    scores = {str(tmp_path / "base"): BASE, str(tmp_path / "lora"): TUNED}
    called = []
    monkeypatch.setattr(dispatch, "evaluate_file", lambda d, path, task=None: called.append((d, path)) or dict(scores[d]))
    table = evaluate([str(tmp_path / "base"), str(tmp_path / "lora")], "f.txt", progress=called.append)
    assert called == [f"eval base (1/2): {tmp_path / 'base'}", (str(tmp_path / "base"), "f.txt"),
                      f"eval lora (2/2): {tmp_path / 'lora'}", (str(tmp_path / "lora"), "f.txt")]
    assert table["task"] == "causal-lm" and rows(table)["loss"]["deltas"] == [0.0, -0.5]
