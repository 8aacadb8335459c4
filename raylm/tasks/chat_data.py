"""Chat rows for instruction tuning (issue 29's `sft` task; its first piece): every input shape read into one
form, `messages` = [{role: system|user|assistant, content}], with the rows that cannot train rejected under a
reason (the rejects ledger) or, under `on_error: fail`, stopping at `file:line`.

Shapes (one JSONL object a line), tried in this order:
- `{"messages": [{"role", "content"}, ...]}`: the HF/OpenAI shape, system turns included;
- `{"instruction", "input"?, "output"}` (Alpaca), `{"prompt", "response"}` and `{"question", "answer"}` (GSM8K);
- two fields named by the caller (`prompt_field`/`response_field`, e.g. GSM8K's `question`/`answer`);
- a transcript field (`transcript_field`, e.g. HH-RLHF's `chosen`): "\\n\\nHuman: ...\\n\\nAssistant: ...".
Torch-free: the prepare readers run on Ray Data workers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from raylm.datasets._task_io import check_on_error, jsonl_rows, reject

ROLES = ("system", "user", "assistant")
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


@dataclass(frozen=True)
class ChatFields:
    """Where a row's conversation is, beyond the shapes read without being told."""

    prompt_field: str | None = None
    response_field: str | None = None
    transcript_field: str | None = None

    @classmethod
    def of(cls, settings: Mapping) -> ChatFields:
        """From `data.sft`'s keys: a config's (dumped) or an export's `raylm_sft`."""
        return cls(settings.get("prompt_field"), settings.get("response_field"), settings.get("transcript_field"))


def parse_transcript(text: str) -> list[dict[str, str]]:
    """`Human:`/`Assistant:` turns of a transcript as messages (text before the first turn is dropped)."""
    parts = _TURN.split(text)
    return [{"role": ROLE_NAMES[who.lower()], "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def to_messages(obj: dict, fields: ChatFields = ChatFields(), prompt_only: bool = False) -> list[dict[str, str]] | None:
    """The conversation of one JSON object, or None when it has none of the shapes (see the module doc).
    `prompt_only`: a row with a prompt but no response is the user's turn alone (rows to complete)."""
    if isinstance(obj.get("messages"), list):
        return [m if isinstance(m, dict) else {"role": "", "content": ""} for m in obj["messages"]]
    if fields.transcript_field and isinstance(obj.get(fields.transcript_field), str):
        return parse_transcript(obj[fields.transcript_field])
    for prompt, response in ((fields.prompt_field, fields.response_field), ("instruction", "output"),
                             ("prompt", "response"), ("question", "answer")):
        if prompt and response and prompt in obj and (response in obj or prompt_only):
            user = str(obj[prompt] or "")
            if prompt == "instruction" and obj.get("input"):
                user = f"{user}\n\n{obj['input']}"
            turns = [{"role": "user", "content": user}]
            return turns + ([{"role": "assistant", "content": str(obj[response] or "")}] if response in obj else [])
    return None


def problem(messages: list[dict]) -> tuple[str, str]:
    """(reason, detail) why a conversation cannot train, or ("", "")."""
    for i, m in enumerate(messages):
        role = ROLE_NAMES.get(str(m.get("role", "")).lower())
        if role is None:
            return "unknown_role", f"message {i} has role {m.get('role')!r} (one of {', '.join(ROLES)})"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "empty_message", f"message {i} ({role}) is empty"
    if not any(ROLE_NAMES.get(str(m.get("role", "")).lower()) == "assistant" for m in messages):
        return "no_assistant_turn", "no assistant turn to learn from"
    return "", ""


def read_chat(path: str, fields: ChatFields = ChatFields(), on_error: str = "fail") -> Iterator[dict]:
    """Rows `{source, row_id, reject, messages}` of a JSONL file (`file:line` row ids); roles normalised."""
    check_on_error(on_error)
    for _, row, line in jsonl_rows(path):
        row["messages"] = []
        try:
            obj = json.loads(line)
        except ValueError:
            yield reject(row, "malformed_json", "malformed JSON", on_error)
            continue
        messages = to_messages(obj, fields) if isinstance(obj, dict) else None
        if messages is None:
            yield reject(row, "missing_field", "no conversation: messages, instruction/output, prompt/response, question/answer"
                         + (f" or {fields.prompt_field}/{fields.response_field}" if fields.prompt_field else ""),
                         on_error)
            continue
        reason, detail = problem(messages)
        if reason:
            yield reject(row, reason, detail, on_error)
            continue
        row["messages"] = [{"role": ROLE_NAMES[str(m["role"]).lower()], "content": m["content"]} for m in messages]
        yield row
