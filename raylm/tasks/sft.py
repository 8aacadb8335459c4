"""sft (`trainer.task: sft`): instruction tuning of a decoder LM on chat rows.

Data (raylm.tasks.sft_data): conversations rendered with a chat template (raylm.tasks.chat_template: the
tokenizer's, ChatML or a Jinja file; tokens the template adds join the vocabulary and the embeddings grow),
the loss on the assistant's tokens (`data.sft.loss_on`), one example a row (batches length-grouped) or several
packed into a row with document masking (raylm.tasks.packing). Model: `model.init_from` (any local HF causal
LM: Llama, Qwen2/3, Mistral, GPT-2, a raylm export) or GPT-2/Llama from `model`; `model.adapter` trains
LoRA/DoRA/QLoRA adapters instead (raylm.trainers.adapters). The export carries the chat tokenizer, and its
generation config stops at the end-of-turn token. Serving: raylm.tasks.sft_serving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from raylm.config import RootConfig
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import prepare_labelled, task_tokenizer
from raylm.tasks import sft_serving
from raylm.tasks.base import GenerateOptions, LabelledTask
from raylm.tasks.chat_template import chat_tokenizer
from raylm.tasks.collate import IGNORE, pad, pad_batch
from raylm.tasks.corpus import causal_model
from raylm.tasks.meta import ModelMeta
from raylm.tasks.packing import packed_batch, packing_problems
from raylm.tasks.sft_data import ChatFormat

CHAT_TOKENIZER_DIR = "chat_tokenizer"  # in data.prepared_dir


def chat_tokenizer_dir(data: DataConfig) -> str:
    """The tokenizer sft trains with: data.tokenizer.path (else one trained on the rows) with the chat template."""
    base = task_tokenizer(data, ChatFormat())
    return chat_tokenizer(base, data.sft.chat_template, os.path.join(data.prepared_dir, CHAT_TOKENIZER_DIR))


class SFT(LabelledTask):
    name = "sft"
    meta_keys = ("sft",)
    eval_order_free = True  # the loss is a sum over trained tokens: eval batches may be length-sorted
    group_by_length = True
    meta_auto_model = "AutoModelForCausalLM"

    def prepare(self, data: DataConfig, force: bool = False) -> dict:
        """Chat rows -> (packed) shards; the manifest's `sft_summary` says what they train on."""
        tok_dir = chat_tokenizer_dir(data)
        cfg = data.model_copy(update={"tokenizer": data.tokenizer.model_copy(update={"path": tok_dir})})
        return prepare_labelled(cfg, ChatFormat(packed=data.sft.packing), force)

    def train_tokenizer(self, data: DataConfig) -> str:
        return chat_tokenizer_dir(data)

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        problems = []
        m, d = cfg.model, cfg.data
        if m.init_from and not d.tokenizer.path:
            problems.append(f"trainer.task=sft with model.init_from: set data.tokenizer.path to the model's tokenizer "
                            f"(e.g. {m.init_from})")
        conf = Path(m.init_from or "", "config.json")
        if m.init_from and conf.is_file():
            c = json.loads(conf.read_text())
            limit = c.get("n_positions") or c.get("max_position_embeddings")
            if limit and d.max_length > limit:
                problems.append(f"data.max_length is {d.max_length} but {m.init_from} has {limit} positions: "
                                f"set data.max_length <= {limit}")
        if d.sft.packing:
            problems += packing_problems()
        return problems

    def check_prepared(self, cfg: RootConfig, manifest: dict) -> list[str]:
        problems = super().check_prepared(cfg, manifest)
        if manifest.get("max_length") != cfg.data.max_length:
            problems.append(f"data.max_length is {cfg.data.max_length} but the shards were prepared with "
                            f"{manifest.get('max_length')}: run `raylm prepare` again")
        return problems

    # ---------------------------------------------------------------- training

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        """The causal LM (its embeddings grown to the chat tokenizer's vocabulary), stopping at the end of a turn."""
        model = causal_model(cfg, meta)
        s = meta.extra["sft"]
        stops = list(dict.fromkeys([s["end_of_turn_id"], meta.eos_id]))
        g = model.generation_config
        g.eos_token_id, g.pad_token_id = stops if len(stops) > 1 else stops[0], meta.pad_id
        g.max_new_tokens, g.do_sample = s["max_new_tokens"], False
        for k in ("temperature", "top_p", "top_k"):  # greedy: sampling settings would be ignored (and warned about)
            setattr(g, k, None)
        model.config.raylm_sft = {k: s[k] for k in ("prompt_field", "response_field", "transcript_field",
                                                    "system_prompt", "loss_on", "answer_pattern", "max_new_tokens",
                                                    "max_length")}
        return model

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        sample = torch.from_numpy(np.array(batch["sample_id"]))
        if "seq_lens" in batch:  # packed rows: positions restart per example, no attention mask
            out = packed_batch(batch["input_ids"], batch["labels"], batch["seq_lens"], meta.pad_id)
        else:
            ids, mask = pad_batch(list(batch["input_ids"]), meta.pad_id)
            out = {"input_ids": ids, "attention_mask": mask, "labels": pad(batch["labels"], IGNORE, ids.shape[1])}
        return out | {"sample_id": sample, "_n": out["labels"][:, 1:].ne(IGNORE).sum()}

    def fused_loss(self) -> bool:
        return True  # next-token cross-entropy on the labels: Liger's fused kernel applies (trainer.fused_kernels)

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # use_cache=False: with a cache, transformers does not read packed positions as example boundaries
        return model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels",
                                                                  "position_ids")}, use_cache=False).loss

    def seq_len(self, meta: ModelMeta) -> int:
        return meta.max_length

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        rows = np.empty(b, dtype=object)
        rows[:] = [np.full(seq_len, 5, np.int32) for _ in range(b)]
        return {"input_ids": rows, "labels": rows.copy(), "sample_id": np.arange(b)}

    # ---------------------------------------------------------------- serving

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        return sft_serving.evaluate_file(model_dir, path)

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        return sft_serving.predict_file(model_dir, path, output, batch_size or 16)

    def generate(self, model_dir: str, prompt: str, options: GenerateOptions) -> str:
        return sft_serving.reply(model_dir, prompt, options)

