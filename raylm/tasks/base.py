"""The base of every task: the hooks `trainer.task` plugs into the loop, data and serving. A task family
is one module of raylm.tasks (corpus, downstream, seq2seq, nsp) or a class outside raylm named by its
import path (`trainer.task: my_pkg.tasks:MyTask`, see raylm.tasks.registry)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from raylm.config import RootConfig
from raylm.trainers import autobatch
from raylm.trainers.step import Batch, evaluate


class Task:
    """A task family's training side: model, collate, loss, evaluation. Every hook but `build_model` and
    `collate` has a default here; the registry (raylm.tasks.registry) names the tasks. What a task
    optimises is in raylm.tasks.objectives (a table the config validator reads without torch)."""

    name = ""
    # Validation metrics are sums over examples (not over the batches' order): the loop may regroup the
    # eval batches by length, so that each pads to its own longest row.
    eval_order_free = False
    meta_keys: tuple[str, ...] = ()  # manifest keys the workers need besides the model's (e.g. NER's tags)

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        """Problems of `cfg` for this task, one line each (checked before training starts)."""
        return []

    def extra_meta(self, cfg: RootConfig, manifest: dict) -> dict:
        """What the workers need besides the manifest's keys (e.g. seq2seq's tokenizer)."""
        return {}

    def build_model(self, cfg: RootConfig, meta: dict) -> torch.nn.Module:
        raise NotImplementedError

    def collate(self, batch: dict[str, np.ndarray], meta: dict, step_seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's targets, on the device. Its weight (the number of targets) is
        counted on the host at collate time (`step.Batch.n`): reading it here would be a host sync."""
        return model(**inputs).loss

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and class predictions (None for language models), both left on the device."""
        return self.loss(model, inputs), None

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                 amp: torch.dtype | None, meta: dict) -> dict[str, float]:
        """Validation metrics over every rank's batches (one all-reduce): the loss by default."""
        return evaluate(model, self.eval_step, batches, device, amp)

    def fake_raw_batch(self, meta: dict, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw batch for the batch_size=auto probe (input_ids blocks by default)."""
        return autobatch.fake_raw_batch(meta, b, seq_len)

    def seq_len(self, meta: dict) -> int:
        """The longest row a batch can hold (the batch-size probe's width; grad_accum from tokens)."""
        return meta["block_size"]
