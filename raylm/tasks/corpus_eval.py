"""`raylm eval` and `raylm generate`: any HF directory, on a prepared split or a prompt."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from raylm.datasets.tokenizers import cls_sep_ids
from raylm.errors import UserError
from raylm.tasks.collate import pad_batch, with_special_tokens
from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import classification_metrics, confusion_counts


def _load(auto_name: str, model_dir: str):
    import transformers

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UserError(f"'{model_dir}' is not a Hugging Face model directory (no config.json)",
                        hint="pass an exported model, e.g. runs/demo/export")
    return getattr(transformers, auto_name).from_pretrained(model_dir).eval()


def split_batches(prepared_dir: str, manifest: dict, split: str, batch_size: int, max_batches: int | None):
    """Batches of one split read straight from the shards (one file at a time)."""
    if split not in manifest["splits"]:
        raise UserError(f"{prepared_dir} has no split '{split}'", hint=f"choose one of: {', '.join(manifest['splits'])}")
    n = 0
    for f in manifest["splits"][split]["files"]:
        table = pq.read_table(os.path.join(prepared_dir, f["path"]))
        for start in range(0, table.num_rows, batch_size):
            if max_batches is not None and n >= max_batches:
                return
            yield table.slice(start, batch_size).to_pydict()
            n += 1


@torch.no_grad()
def perplexity(model_dir: str, prepared_dir: str, manifest: dict, split: str = "validation",
               batch_size: int = 32, max_batches: int | None = None) -> dict:
    """Token-weighted mean loss, perplexity, and nats per character of a causal LM on a split."""
    model = _load("AutoModelForCausalLM", model_dir)
    loss_sum, n_tok = 0.0, 0
    for batch in split_batches(prepared_dir, manifest, split, batch_size, max_batches):
        ids = torch.tensor(np.asarray(batch["input_ids"], dtype=np.int64))
        out = model(input_ids=ids, labels=ids)
        n = ids.numel() - ids.shape[0]
        loss_sum, n_tok = loss_sum + out.loss.item() * n, n_tok + n
    if not n_tok:
        raise UserError(f"split '{split}' of {prepared_dir} has no rows to evaluate",
                        hint=_empty_split_hint(prepared_dir, manifest, split))
    loss = loss_sum / n_tok
    s = manifest["splits"][split]
    chars_per_token = s["chars"] / max(s["tokens_in"], 1)
    return {"split": split, "loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": n_tok,
            "nats_per_char": loss / chars_per_token, "chars_per_token": chars_per_token}


def _empty_split_hint(prepared_dir: str, manifest: dict, split: str) -> str:
    notes = manifest.get("notes") or []
    why = f" ({notes[0]})" if notes else ""
    return f"re-run `raylm prepare` and check its {split} split{why}; rejected rows: {prepared_dir}/rejects/"


@torch.no_grad()
def classify(model_dir: str, prepared_dir: str, manifest: dict, split: str = "validation",
             batch_size: int = 64, pad_id: int = 0) -> dict:
    model = _load("AutoModelForSequenceClassification", model_dir)
    # As in training: [CLS] ... [SEP] around the shard ids when the tokenizer defines them.
    meta = ModelMeta(max_length=manifest.get("max_length"), **cls_sep_ids(manifest.get("tokenizer_dir") or model_dir))
    k = max(int(manifest.get("num_labels") or 0), int(model.config.num_labels))
    confusion = np.zeros(k * k)
    for batch in split_batches(prepared_dir, manifest, split, batch_size, None):
        seqs, y = [with_special_tokens(s, meta) for s in batch["input_ids"]], torch.tensor(batch["label"])
        ids, mask = pad_batch(seqs, pad_id)
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        confusion += confusion_counts(pred, y, k)
    if not confusion.sum():
        # An accuracy of 0.0 over nothing reads like a result; it is a missing split.
        raise UserError(f"split '{split}' of {prepared_dir} has no examples to evaluate",
                        hint=_empty_split_hint(prepared_dir, manifest, split))
    return {"split": split, **classification_metrics(confusion)}


@torch.no_grad()
def generate(model_dir: str, prompt: str, max_new_tokens: int = 60, temperature: float = 0.7,
             top_k: int = 50, top_p: float = 0.9, no_repeat_ngram_size: int = 3, seed: int = 0,
             draws: int = 1) -> list[str]:
    """`draws` continuations of `prompt` (seeds seed, seed+1, ...; the model loaded once), prompt included."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = _load("AutoModelForCausalLM", model_dir)
    ids = tok(prompt).input_ids
    return [tok.decode(sample_continuation(model, tok, ids, max_new_tokens, seed + i, temperature, top_k, top_p,
                                           no_repeat_ngram_size)[1][0], skip_special_tokens=True)
            for i in range(draws)]


def sample_continuation(model: Any, tok: Any, ids: list[int], max_new_tokens: int, seed: int,
                        temperature: float = 0.7, top_k: int = 50, top_p: float = 0.9,
                        no_repeat_ngram_size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, prompt + continuation ids), each [1, n], of a causal LM: temperature, top-k and nucleus (top-p) sampling, and no
    n-gram of `no_repeat_ngram_size` tokens twice (a small model's loops: "the list of the list of"). The prompt
    keeps its last tokens within the model's context (EOS when empty); the continuation fills the rest at most."""
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    prompt = torch.tensor([ids[-limit + 1:] or [tok.eos_token_id]])
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=min(max_new_tokens, limit - prompt.shape[1]), do_sample=True,
                         temperature=temperature, top_k=top_k, top_p=top_p,
                         no_repeat_ngram_size=no_repeat_ngram_size, pad_token_id=tok.eos_token_id)
    return prompt, out
