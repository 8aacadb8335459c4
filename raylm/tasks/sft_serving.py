"""An sft export (a full model, a merged one or an adapter directory) on raw chat files: the response loss
(`raylm eval --input`), exact match of generated final answers, completions (`raylm predict`) and one reply
(`raylm generate`). Rows are read and encoded as `raylm prepare` reads them (raylm.tasks.sft_data), with the
settings the model was trained with (`raylm_sft` in its config.json)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from raylm.datasets.labelled import refuse_malformed
from raylm.datasets.task_config import SftDataConfig
from raylm.errors import UserError
from raylm.tasks.chat_data import ChatFields, read_chat
from raylm.tasks.chat_template import CHATML, CHATML_TOKENS, chat_tokens, encode_chat, prompt_ids
from raylm.tasks.collate import IGNORE, pad, pad_batch
from raylm.tasks.sft_data import with_system

HINT = "JSONL rows: {messages: [...]}, {instruction, output}, {prompt, response}, or the fields the model was tuned on"


@dataclass
class ChatModel:
    model: Any
    tok: Any  # transformers tokenizer with the chat template
    backend: Any  # its plain tokenizers.Tokenizer
    end_of_turn: str
    settings: dict
    max_positions: int | None
    end_is_text: bool = False  # a model without a chat template, prompted with ChatML as plain text

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else 0


def load(model_dir: str) -> ChatModel:
    """The model (eval mode) and its chat tokenizer; an adapter directory loads its base with it."""
    from transformers import AutoTokenizer

    from raylm.datasets._task_io import plain_tokenizer
    from raylm.trainers.adapters import load_causal_lm

    model = load_causal_lm(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    conf = model.config
    settings = SftDataConfig().model_dump() | {"max_length": None} | dict(getattr(conf, "raylm_sft", None) or {})
    limit = getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None)
    if not getattr(tok, "chat_template", None):  # a pretrained model (`raylm eval BASE TUNED --task sft`)
        tok.chat_template = CHATML
        return ChatModel(model, tok, plain_tokenizer(tok), CHATML_TOKENS[1], settings, limit, end_is_text=True)
    return ChatModel(model, tok, plain_tokenizer(tok), chat_tokens(tok, model_dir).end_of_turn, settings, limit)


def read_rows(path: str, cm: ChatModel) -> tuple[list[dict], int]:
    """(conversations read, rows rejected); a line that cannot be read stops with file:line (exit 2)."""
    s = cm.settings
    read = refuse_malformed(list(read_chat(path, ChatFields.of(s), "skip")), hint=HINT)
    rows = [{"id": r["row_id"], "messages": with_system(r["messages"], s.get("system_prompt"))}
            for r in read if not r["reject"]]
    if not rows:
        raise UserError(f"{path}: no conversation to score ({len(read)} read, all rejected)", hint=HINT)
    return rows, len(read) - len(rows)


@torch.no_grad()
def response_loss(cm: ChatModel, rows: list[dict], batch_size: int = 8) -> dict:
    """Mean cross-entropy over the trained tokens (the responses), examples cut at the trained max_length; and
    bits per byte of their text, which compares models whose tokenizers differ (a base without chat tokens)."""
    limit = cm.settings.get("max_length") or cm.max_positions or 1 << 30
    encoded = [encode_chat(cm.tok, cm.backend, r["messages"], cm.end_of_turn, cm.settings["loss_on"]) for r in rows]
    encoded = sorted(((i[:limit], lab[:limit]) for i, lab in encoded), key=lambda e: len(e[0]))
    total, n = 0.0, 0
    # the targets' text (labels are shifted: position 0 is never one)
    n_bytes = sum(len(cm.tok.decode([t for t in lab[1:] if t != IGNORE]).encode()) for _, lab in encoded)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, mask = pad_batch([e[0] for e in chunk], cm.pad_id)
        labels = pad([e[1] for e in chunk], IGNORE, ids.shape[1])
        logits = cm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=IGNORE, reduction="sum"))
        n += int(target.ne(IGNORE).sum())
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": total / math.log(2) / max(n_bytes, 1),
            "trained_tokens": n}


@torch.no_grad()
def complete(cm: ChatModel, conversations: list[list[dict]], batch_size: int = 16, max_new_tokens: int | None = None,
             **sampling: Any) -> list[str]:
    """The assistant's next turn for each conversation (a last assistant turn is dropped: that is the
    reference), greedy unless `sampling` says otherwise; it stops at the end-of-turn token."""
    prompts = [prompt_ids(cm.tok, cm.backend, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    asked = max_new_tokens or cm.settings.get("max_new_tokens") or 256
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [prompts[i] for i in chunk]
        width = max(len(r) for r in rows)
        room = (cm.max_positions - width) if cm.max_positions else asked
        if room <= 0:
            raise UserError(f"a prompt of {width} tokens leaves no room to generate in {cm.max_positions} positions")
        ids = torch.full((len(rows), width), cm.pad_id, dtype=torch.long)  # left padding: generation goes on at the right
        mask = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            ids[k, width - len(r):] = torch.tensor(r)
            mask[k, width - len(r):] = 1
        stop = {"stop_strings": [cm.end_of_turn], "tokenizer": cm.tok} if cm.end_is_text else {}
        gen = cm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=min(asked, room),
                                pad_token_id=cm.pad_id, **({"do_sample": False} | stop | sampling))
        for i, seq in zip(chunk, gen[:, width:].tolist()):
            out[i] = cm.tok.decode(seq, skip_special_tokens=True).split(cm.end_of_turn)[0].strip()
    return out


def final_answer(text: str, pattern: str) -> str | None:
    """The first group of the pattern's last match (GSM8K's `#### 42` -> "42"), commas and a trailing period
    dropped; None without a match."""
    found = list(re.finditer(pattern, text))
    if not found:
        return None
    value = (found[-1].group(1) if found[-1].groups() else found[-1].group(0)).strip()
    return value.replace(",", "").rstrip(".").strip()


def evaluate_file(model_dir: str, path: str) -> dict:
    """Response loss on the file's conversations; with references holding a final answer (the answer
    pattern), exact match of the generated answers too."""
    cm = load(model_dir)
    rows, rejected = read_rows(path, cm)
    out = {"task": "sft", "examples": len(rows), "rejected": rejected, **response_loss(cm, rows)}
    pattern = cm.settings["answer_pattern"]
    refs = [final_answer(r["messages"][-1]["content"], pattern) if r["messages"][-1]["role"] == "assistant" else None
            for r in rows]
    scored = [i for i, a in enumerate(refs) if a is not None]
    if scored:
        replies = complete(cm, [rows[i]["messages"] for i in scored])
        hits = [final_answer(t, pattern) == refs[i] for i, t in zip(scored, replies)]
        out |= {"exact_match": sum(hits) / len(hits), "answered": sum(final_answer(t, pattern) is not None
                                                                      for t in replies) / len(replies),
                "generated": len(replies)}
    return out


def predict_file(model_dir: str, path: str, output: str, batch_size: int = 16) -> dict:
    """One JSON line {id, prompt, completion} per conversation (a last assistant turn is left out of the prompt)."""
    cm = load(model_dir)
    rows = prompts_of(path, cm)
    replies = complete(cm, [r["messages"] for r in rows], batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        for r, text in zip(rows, replies):
            user = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
            f.write(json.dumps({"id": r["id"], "prompt": user, "completion": text}, ensure_ascii=False) + "\n")
    return {"task": "sft", "rows": len(rows), "output": output}


def prompts_of(path: str, cm: ChatModel) -> list[dict]:
    """Rows to complete: any conversation shape, and also prompts alone ({prompt}, {instruction}, {question}, or the
    model's prompt field without its response)."""
    from raylm.datasets._task_io import jsonl_rows, parse_json_object
    from raylm.tasks.chat_data import to_messages

    s, rows = cm.settings, []
    for _, base, line in jsonl_rows(path):
        obj = parse_json_object(line, base["row_id"])
        messages = to_messages(obj, ChatFields.of(s), prompt_only=True)
        if not messages:
            raise UserError(f"{base['row_id']}: no prompt or conversation", hint=HINT)
        rows.append({"id": str(obj.get("id", base["row_id"])), "messages": with_system(messages, s.get("system_prompt"))})
    if not rows:
        raise UserError(f"{path}: no rows", hint=HINT)
    return rows


def reply(model_dir: str, prompt: str, options: Any) -> str:
    """`raylm generate` on an sft export: the assistant's reply to one user turn (sampled)."""
    cm = load(model_dir)
    torch.manual_seed(options.seed)
    messages = with_system([{"role": "user", "content": prompt}], cm.settings.get("system_prompt"))
    return complete(cm, [messages], 1, options.max_new_tokens, do_sample=True, temperature=options.temperature,
                    top_p=options.top_p, no_repeat_ngram_size=options.no_repeat_ngram)[0]

