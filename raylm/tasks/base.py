"""The base of every task: the hooks `trainer.task` plugs into the loop, data and serving. A task family
is one module of raylm.tasks (corpus, downstream, seq2seq, nsp) or a class outside raylm named by its
import path (`trainer.task: my_pkg.tasks:MyTask`, see raylm.tasks.registry)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import torch

from raylm.config import RootConfig
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import LabelledFormat, prepare_labelled, task_tokenizer
from raylm.datasets.tokenizer_training import ensure_tokenizer
from raylm.datasets.units import prepare_corpus, resolve_source
from raylm.errors import UserError
from raylm.tasks.meta import ModelMeta
from raylm.trainers import autobatch
from raylm.trainers.step import Batch, evaluate


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """`raylm generate`'s decoding options; a task reads those that apply (sampling for LMs, beams for seq2seq;
    None: the model's generation_config)."""

    max_new_tokens: int | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    no_repeat_ngram: int = 3
    seed: int = 0
    num_beams: int | None = None
    length_penalty: float | None = None


class Task:
    """A task family: its data (prepare, tokenizer), its training side (model, collate, loss, evaluation)
    and its serving side (score and predict a raw file). Every hook but `build_model` and `collate` has a
    default here, the one of a language model on packed corpus blocks; the registry
    (raylm.tasks.registry) names the tasks. What a task optimises is in raylm.tasks.objectives (a table
    the config validator reads without torch) or, for a task outside raylm, its `objective`."""

    name = ""
    objective: tuple[str, str] = ("val_loss", "min")  # read for tasks outside raylm (see objectives.py)
    # Validation metrics are sums over examples (not over the batches' order): the loop may regroup the
    # eval batches by length, so that each pads to its own longest row.
    eval_order_free = False
    meta_keys: tuple[str, ...] = ()  # manifest keys the workers need in ModelMeta.extra (e.g. NER's tags)
    # Rows vary in length: `data.stream.group_by_length: auto` length-groups its batches (packed blocks do not).
    group_by_length = False
    # Shards hold blocks of data.block_size tokens (a changed block_size needs a new prepare).
    packed_blocks = False
    meta_auto_model = ""  # see meta_init_class
    tokenizer_needs: tuple[str, ...] = ()  # tokenizer facts it cannot do without (see tokenizers.check_facts)

    # ---------------------------------------------------------------- data

    def prepare(self, data: DataConfig, force: bool = False) -> dict:
        """Shards + manifest.json (Ray initialised; a no-op when up to date): packed corpus blocks by default."""
        return prepare_corpus(data, self.name, force, needs=self.tokenizer_needs)

    def train_tokenizer(self, data: DataConfig) -> str:
        """`raylm tokenizer train`: the tokenizer directory, trained when missing (Ray initialised)."""
        return ensure_tokenizer(data, resolve_source(data), self.tokenizer_needs)

    def trains_on(self, prepared_task: str) -> bool:
        """Whether shards prepared for `prepared_task` (the manifest's) train this task."""
        return prepared_task == self.name

    def check_inputs(self, cfg: RootConfig) -> list[str]:
        """Problems of the input files this task reads, beyond the corpus checks (preflight), one line each."""
        return []

    def check_prepared(self, cfg: RootConfig, manifest: dict) -> list[str]:
        """Problems of training `cfg` on shards with this manifest, one line each."""
        problems = []
        if not self.trains_on(manifest.get("task", "causal-lm")):
            problems.append(f"data in {cfg.data.prepared_dir} was prepared for {manifest.get('task')}, "
                            f"not {self.name}: run `raylm prepare` with this config")
        if self.packed_blocks and manifest.get("block_size") != cfg.data.block_size:
            problems.append(f"data.block_size is {cfg.data.block_size} but the shards hold blocks of "
                            f"{manifest.get('block_size')}: prepare again or set data.block_size")
        return problems

    # ---------------------------------------------------------------- serving (an exported model)

    def evaluate_file(self, model_dir: str, path: str) -> dict:
        """`raylm eval MODEL --input FILE`: the task's metrics on a raw file."""
        raise UserError(f"{self.name} has no per-file eval", hint="score a prepared split: raylm eval MODEL --config C")

    def predict_file(self, model_dir: str, path: str, output: str, batch_size: int | None = None) -> dict:
        """`raylm predict MODEL --input FILE --output OUT.jsonl`: one JSON line per input row; returns
        {task, rows, output}. `batch_size`: rows per forward pass (None: the task's default)."""
        raise UserError(f"{self.name} has no per-file predict")

    def generate(self, model_dir: str, prompt: str, options: GenerateOptions) -> str:
        """`raylm generate MODEL --prompt TEXT`: the model's text for `prompt`."""
        raise UserError(f"a {self.name} model does not generate text",
                        hint="raylm generate takes a causal LM or a seq2seq export; score this one with raylm eval")

    def evaluate_prepared(self, model_dir: str, prepared_dir: str, manifest: dict, split: str,
                          max_batches: int | None) -> dict:
        """`raylm eval MODEL --config C`: the task's metrics on a prepared split."""
        raise UserError(f"{self.name} models are scored on a raw labelled file",
                        hint=f"raylm eval {model_dir} --input FILE (e.g. the config's data.validation_source)")

    # ---------------------------------------------------------------- training

    @classmethod
    def check_config(cls, cfg: RootConfig) -> list[str]:
        """Problems of `cfg` for this task, one line each (checked before training starts)."""
        return []

    def extra_meta(self, cfg: RootConfig, manifest: dict) -> dict:
        """What the workers need besides the manifest's keys (e.g. seq2seq's tokenizer): a key naming a
        ModelMeta field sets it, any other lands in `meta.extra`."""
        return {}

    def meta_init_class(self, meta: ModelMeta) -> str:
        """The transformers Auto class that builds an `init_from` skeleton on the meta device (FSDP); "": the
        model is built whole on every rank, then sharded."""
        return self.meta_auto_model

    def pretrained_kwargs(self, meta: ModelMeta) -> dict:
        """Keyword arguments of `auto_model.from_pretrained/from_config` beyond the checkpoint's config."""
        return {}

    def fused_loss(self) -> bool:
        """True when the loss is next-token cross-entropy that Liger's fused kernel may compute."""
        return False

    def build_model(self, cfg: RootConfig, meta: ModelMeta) -> torch.nn.Module:
        raise NotImplementedError

    def collate(self, batch: dict[str, np.ndarray], meta: ModelMeta, step_seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the batch's targets, on the device. Its weight (the number of targets) is
        counted on the host at collate time (`step.Batch.n`): reading it here would be a host sync."""
        return model(**inputs).loss

    def eval_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and class predictions (None for language models), both left on the device."""
        return self.loss(model, inputs), None

    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                 amp: torch.dtype | None, meta: ModelMeta) -> dict[str, float]:
        """Validation metrics over every rank's batches (one all-reduce): the loss by default."""
        return evaluate(model, self.eval_step, batches, device, amp)

    def fake_raw_batch(self, meta: ModelMeta, b: int, seq_len: int) -> dict[str, np.ndarray]:
        """A full-length raw batch for the batch_size=auto probe (input_ids blocks by default)."""
        return autobatch.fake_raw_batch(meta, b, seq_len)

    def seq_len(self, meta: ModelMeta) -> int:
        """The longest row a batch can hold (the batch-size probe's width; grad_accum from tokens)."""
        return meta.block_size


class LabelledTask(Task):
    """A task reading labelled files (NER, QA, seq2seq, ...) through raylm.datasets.labelled: its
    `labelled_format` holds the readers, row and feature layout, features and tokenizer."""

    labelled_format: LabelledFormat

    def prepare(self, data: DataConfig, force: bool = False) -> dict:
        return prepare_labelled(data, self.labelled_format, force)

    def train_tokenizer(self, data: DataConfig) -> str:
        return task_tokenizer(data, self.labelled_format)
