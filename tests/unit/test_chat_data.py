"""Chat rows for instruction tuning (issue 29, first piece): every input shape the issue names read into one
`messages` form; rows that cannot train go to the ledger under a reason, or stop at file:line (fail mode)."""

from __future__ import annotations

import json

import pytest

from raylm.datasets.sources import BadRowError
from raylm.tasks.chat_data import ChatFields, parse_transcript, read_chat

pytestmark = pytest.mark.unit

HH = ("\n\nHuman: what is a good pen trick?\n\nAssistant: Spin it on your thumb.\n\nHuman: how?"
      "\n\nAssistant: Balance it, then flick.")


def _jsonl(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_every_shape_reads_into_messages(tmp_path):
    path = _jsonl(tmp_path, [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}]},
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        {"prompt": "Capital of France?", "response": "Paris."},
        {"question": "1+1?", "answer": "#### 2"},
        {"chosen": HH},
    ])
    rows = list(read_chat(path, ChatFields("question", "answer", "chosen")))
    assert [r["reject"] for r in rows] == [""] * 5
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[1]["messages"] == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert rows[2]["messages"][1]["content"] == "Paris."
    assert rows[3]["messages"] == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "#### 2"}]
    assert [m["role"] for m in rows[4]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rows[4]["messages"][3]["content"] == "Balance it, then flick."
    assert rows[0]["row_id"] == f"{path}:1" and rows[4]["row_id"] == f"{path}:5"


def test_transcripts_keep_multi_paragraph_turns():
    turns = parse_transcript("\n\nHuman: two\n\nparagraphs\n\nAssistant: ok")
    assert turns == [{"role": "user", "content": "two\n\nparagraphs"}, {"role": "assistant", "content": "ok"}]


def test_rows_that_cannot_train_are_rejected_by_reason_or_stop_at_file_and_line(tmp_path):
    path = _jsonl(tmp_path, [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "narrator", "content": "Once"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]},
        "{not json",
        {"title": "no conversation here"},
        {"prompt": "ok?", "response": "ok."},
    ])
    rows = list(read_chat(path, on_error="skip"))
    assert [r["reject"] for r in rows] == ["no_assistant_turn", "unknown_role", "empty_message", "malformed_json",
                                           "missing_field", ""]
    assert rows[-1]["messages"][1]["content"] == "ok."
    with pytest.raises(BadRowError, match=rf"{path}:1: no assistant turn"):
        list(read_chat(path, on_error="fail"))
