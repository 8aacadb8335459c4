"""Chat templates for instruction tuning (`trainer.task: sft`): which template renders a conversation, the
tokenizer that carries it (with the tokens it adds), and a conversation turned into token ids with the trained
tokens marked (labels = -100 elsewhere).

    messages --(template: the tokenizer's, ChatML or a Jinja file)--> text
             --(one encoding with offsets)--> ids; labels = ids on the assistant's characters, -100 elsewhere

Where each assistant turn starts and ends in the text comes from rendering the conversation up to that turn
(`add_generation_prompt=True`: the assistant's header is not trained) and up to its end: the template must
render a conversation as the prefix of its continuations, which HF's templates do. A turn's trained text ends
with its end-of-turn token (the model learns to stop); what the template puts after it (a newline) is not
trained. The text is encoded once as a whole: the same ids generation sees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylm.errors import UserError
from raylm.tasks.collate import IGNORE

# ChatML (OpenAI; Qwen's base format): two special tokens around each turn.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_FILE = "raylm_chat.json"  # beside the tokenizer: the end-of-turn token and where the template came from


@dataclass(frozen=True)
class ChatTokens:
    """The ids a chat model trains and stops with."""

    end_of_turn: str
    end_of_turn_id: int
    eos_id: int
    pad_id: int


def template_text(setting: str, tokenizer: Any) -> str:
    """The template `data.sft.chat_template` names: auto (the tokenizer's, else ChatML), chatml, or a Jinja file."""
    if setting == "auto":
        return getattr(tokenizer, "chat_template", None) or CHATML
    if setting == "chatml":
        return CHATML
    path = Path(setting)
    if not path.is_file():
        raise UserError(f"data.sft.chat_template: '{setting}' is neither auto, chatml nor a Jinja file",
                        hint="auto uses the tokenizer's own template (ChatML when it has none)")
    return path.read_text()


def chat_tokenizer(base_dir: str, setting: str, out_dir: str) -> str:
    """`out_dir`: the tokenizer of `base_dir` carrying the chat template (ChatML's two tokens added as special
    tokens when the template is ChatML and the vocabulary lacks them; the model's embeddings grow to match).
    Rewritten only when the base or the setting changed."""
    from transformers import AutoTokenizer

    stamp = {"base": os.path.abspath(base_dir), "setting": setting,
             "base_files": sorted((f.name, f.stat().st_size) for f in Path(base_dir).glob("*token*"))}
    done = Path(out_dir, CHAT_FILE)
    if done.is_file() and json.loads(done.read_text()).get("stamp") == stamp:
        return out_dir
    tok = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    template = template_text(setting, tok)
    if template == CHATML:
        missing = [t for t in CHATML_TOKENS if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
    tok.chat_template = template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    end = end_of_turn(tok)
    tmp = f"{out_dir}.tmp"
    tok.save_pretrained(tmp)
    Path(tmp, CHAT_FILE).write_text(json.dumps({"end_of_turn": end, "stamp": stamp}, indent=1))
    if os.path.isdir(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def end_of_turn(tok: Any) -> str:
    """The token a rendered assistant turn ends with: the first special token after its text (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>), else EOS."""
    probe = "zq7 probe reply"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                                   tokenize=False)
    after = text[text.rfind(probe) + len(probe):]
    specials = sorted((t for t in tok.all_special_tokens if t and t in after), key=after.find)
    if specials:
        return specials[0]
    if tok.eos_token is None:
        raise UserError("the tokenizer has no EOS token and its chat template no end-of-turn token",
                        hint="set data.sft.chat_template: chatml")
    return tok.eos_token


def chat_tokens(tok: Any, tokenizer_dir: str) -> ChatTokens:
    """The end-of-turn, EOS and padding ids of a chat tokenizer made by `chat_tokenizer` (or any tokenizer
    with a template)."""
    saved = Path(tokenizer_dir, CHAT_FILE)
    end = json.loads(saved.read_text())["end_of_turn"] if saved.is_file() else end_of_turn(tok)
    end_id = tok.convert_tokens_to_ids(end)
    eos = tok.eos_token_id if tok.eos_token_id is not None else end_id
    return ChatTokens(end, end_id, eos, tok.pad_token_id if tok.pad_token_id is not None else eos)


def render(tok: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tok: Any, messages: list[dict], end: str, loss_on: str) -> tuple[str, list[tuple[int, int]]]:
    """(the conversation's text, the character spans trained): each assistant turn's text through its
    end-of-turn token (`loss_on` assistant), the last one only (last_assistant), or all of it (all)."""
    text = render(tok, messages)
    if loss_on == "all":
        return text, [(0, len(text))]
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start, stop = render(tok, messages[:i], generation_prompt=True), render(tok, messages[: i + 1])
        if not (stop.startswith(start) and text.startswith(stop)):
            raise UserError("the chat template does not render a conversation as the prefix of its continuations: "
                            "assistant turns cannot be located", hint="set data.sft.chat_template: chatml or a Jinja file")
        cut = stop.rfind(end, len(start))
        spans.append((len(start), cut + len(end) if cut >= 0 else len(stop)))
    return text, spans[-1:] if loss_on == "last_assistant" else spans


def encode_chat(tok: Any, backend: Any, messages: list[dict], end: str, loss_on: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation: `backend` (a plain tokenizers.Tokenizer) encodes the rendered text once;
    a token is trained when it ends inside a trained span (a token that starts in the header before a reply, as
    byte-level BPE's " It" after "assistant: ", is the reply's first token: the model must produce it)."""
    text, spans = assistant_spans(tok, messages, end, loss_on)
    enc = backend.encode(text, add_special_tokens=False)
    labels = []
    k = 0
    for tid, (_, e) in zip(enc.ids, enc.offsets):
        while k < len(spans) and e > spans[k][1]:
            k += 1
        labels.append(tid if k < len(spans) and spans[k][0] < e <= spans[k][1] else IGNORE)
    return list(enc.ids), labels


def prompt_ids(tok: Any, backend: Any, messages: list[dict]) -> list[int]:
    """The ids generation starts from: the conversation before its last assistant turn (when it ends with one)
    and the assistant's header."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return list(backend.encode(render(tok, messages, generation_prompt=True), add_special_tokens=False).ids)
