"""The `model` and `trainer` config sections."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raylm.tasks.names import name_problem

log = logging.getLogger(__name__)


class AdapterConfig(BaseModel):
    """`model.adapter`: train low-rank adapters through `peft` instead of the whole model (the base is frozen; only
    the adapter's parameters reach the optimizer and the checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "lora", "dora", "qlora"] = Field(
        "none", description="none: full fine-tuning; lora; dora (weight-decomposed LoRA); qlora: LoRA on a 4-bit "
        "base (bitsandbytes, CUDA only).",
    )
    r: int = Field(8, ge=1, description="The adapters' rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA's scale numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: str | list[str] = Field(
        "auto", description="Module names the adapters wrap; auto: the attention and MLP projections of the "
        "architecture (q/k/v/o and gate/up/down for Llama, Qwen, Mistral; c_attn/c_proj/c_fc for GPT-2).",
    )

    @property
    def enabled(self) -> bool:
        return self.type != "none"


class ModelConfig(BaseModel):
    """The model: built from a config (arch + sizes) or loaded from `init_from`."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["gpt2", "llama", "bert", "roberta", "bart", "t5", "marian"] = Field(
        "gpt2", description="Architecture built from a config when `init_from` is unset (bart, t5, marian: "
        "encoder-decoders for trainer.task=seq2seq, n_layer layers each side).",
    )
    init_from: str | None = Field(
        None, description="A local HF model directory (or raylm checkpoint) to start from."
    )
    n_layer: int = Field(4, ge=1, description="Transformer blocks (with init_from: used for MFU only).")
    n_embd: int = Field(128, ge=8, description="Hidden size (with init_from: used for MFU only).")
    n_head: int = Field(4, ge=1, description="Attention heads; must divide n_embd.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout of a model built from a config.")
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel: sdpa (torch scaled_dot_product_attention) or eager."
    )
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description=AdapterConfig.__doc__)
    trust_remote_code: bool = Field(
        False, description="Run the code a model directory ships (`init_from`): off unless you trust its author.",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class FsdpConfig(BaseModel):
    """`trainer.fsdp`: how FSDP2 (`trainer.scaling.strategy: fsdp`) shards, casts, offloads and checkpoints."""

    model_config = ConfigDict(extra="forbid")

    param_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Dtype of the gathered parameters in forward/backward (MixedPrecisionPolicy). "
        "The sharded master weights and the optimizer stay fp32. auto: bf16 on CUDA, fp32 (off) on CPU.",
    )
    reduce_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Dtype of the gradient reduce-scatter (fp32 keeps the sum exact across many ranks)."
    )
    cpu_offload: bool = Field(
        False, description="Keep sharded parameters, gradients and the optimizer step on the CPU "
        "(CPUOffloadPolicy): fits larger models on the GPU at the cost of host-device copies.",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each transformer block's activations in backward (per-block checkpoint "
        "wrapper, non-reentrant): memory per block falls to its inputs.",
    )
    replicate: int = Field(
        1, ge=1, description="HSDP: replica groups. Workers are split into `replicate` groups of "
        "num_workers/replicate; parameters are sharded inside a group (e.g. a node) and replicated across groups "
        "(a 2-D DeviceMesh). 1: plain FSDP over all workers.",
    )
    reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after each block's forward (ZeRO-3); False keeps them until "
        "backward (ZeRO-2: less communication, more memory).",
    )
    checkpoint: Literal["sharded", "full"] = Field(
        "sharded", description="sharded: every rank writes its own shard with torch.distributed.checkpoint (DCP), "
        "nobody gathers the model; `raylm export` consolidates. full: gather an HF `model/` dir + optimizer on "
        "rank 0 (the DDP format).",
    )
    async_checkpoint: bool = Field(
        True, description="sharded only: stage the shard to CPU memory, then write it in the background "
        "(dcp.async_save) while training goes on; Ray Train registers the checkpoint once the write completes.",
    )
    release_host_memory: bool = Field(
        True, description="Workers return freed host buffers of 1 MiB and up to the OS (glibc: a fixed mmap "
        "threshold, two arenas): the per-block all-gather and reduce-scatter buffers no longer pile up in "
        "the heap (CPU, 0.74B, 2 workers: peak RSS 8.08 -> 7.24 GiB a worker). DDP keeps glibc's defaults "
        "(there the threshold cost a small model 40% of its step time).",
    )


# --- `trainer` sections (torchtitan / Ray Train V2 layout: scaling, optimizer, schedule, eval, ...)


class ScalingSection(BaseModel):
    """How many Ray Train workers, on what, and how they share the model (ray.train.ScalingConfig)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int | tuple[int, int] = Field(
        2, description="Ray Train workers (one process each). [min, max]: elastic -- the run starts with as many "
        "as the cluster fits (at least min), keeps training on fewer when a node is lost, and grows back "
        "to max when nodes return (each change restarts from the latest checkpoint; data.stream.sharding auto "
        "becomes stride so every sample is still seen once).",
    )
    elastic_resize_s: float = Field(
        60.0, ge=0, description="Elastic runs: seconds between looks for room to grow back to max workers "
        "(growing restarts the workers from the latest checkpoint).",
    )
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="One GPU per worker. auto: when the cluster has a GPU for every worker."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each worker reserves.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Other Ray resources each worker reserves (custom ones too): "
        "e.g. {trainslot: 1} with one trainslot per node puts one worker per node.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every worker holds the model (DistributedDataParallel). fsdp: FSDP2, each worker "
        "holds a shard; the model is built on the meta device and materialised shard by shard (see trainer.fsdp).",
    )
    max_failures: int = Field(
        2, ge=0, description="Restarts after failures of the run itself (a crash, a lost node) before it fails.",
    )
    max_preemptions: int = Field(
        -1, ge=-1, description="Restarts after preemptions, counted apart from max_failures (-1: no limit). "
        "A preemption is a node drain (`ray drain-node --reason PREEMPTION`, KubeRay, spot reclaims) or a "
        "SIGTERM to a worker: the workers checkpoint at the next log step, then exit for a restart.",
    )

    @model_validator(mode="after")
    def _workers(self) -> "ScalingSection":
        n = self.num_workers
        if isinstance(n, tuple) and not 1 <= n[0] <= n[1]:
            raise ValueError(f"num_workers {list(n)}: an elastic range is [min, max] with 1 <= min <= max")
        if isinstance(n, int) and n < 1:
            raise ValueError(f"num_workers ({n}) must be at least 1, or a [min, max] range")
        return self


class OptimizerSection(BaseModel):
    """AdamW, with weight decay on matrices only (raylm.trainers.optim)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of the 2-D (matrix) parameters.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm (0: off).")


class ScheduleSection(BaseModel):
    """The learning-rate schedule: linear warmup, then a decay to `min_lr_ratio` at trainer.max_steps."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup: cosine, linear, or constant (no decay)."
    )
    warmup_steps: int = Field(10, ge=0, description="Optimizer steps of linear warmup from 0 to the peak lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr as a share of the peak.")


class EvalSection(BaseModel):
    """Validation cadence, and the metric that ranks checkpoints."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(50, ge=1, description="Evaluate on validation every N steps.")
    batches: int = Field(20, ge=1, description="Validation batches per worker per evaluation.")
    best_metric: str | None = Field(
        None, description="Metric that ranks checkpoints (default: the task's, val_loss or val_accuracy)."
    )
    best_mode: Literal["auto", "min", "max"] = Field("auto", description="auto: the task's direction.")


class GenerationSection(BaseModel):
    """seq2seq decoding (beam search): validation's BLEU/ROUGE, and the defaults the exported model
    carries in its generation_config.json for `raylm predict`, `raylm eval --input` and `raylm generate`."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(4, ge=1, description="Beams of the beam search (1: greedy).")
    length_penalty: float = Field(
        1.0, description="Exponent of the length normalisation of beam scores (score / length**penalty): "
        "above 1 favours longer outputs, below 1 shorter ones.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Longest output, in sub-tokens.")
    eval_batches: int = Field(
        4, ge=0, description="Validation batches per worker that are decoded for BLEU/ROUGE at each evaluation "
        "(the loss covers all trainer.eval.batches): decoding costs far more than the loss.",
    )


class CheckpointSection(BaseModel):
    """Checkpoint cadence and retention (ray.train.CheckpointConfig)."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(50, ge=1, description="Checkpoint every N steps (and at the end).")
    num_to_keep: int = Field(
        2, ge=1, description="Checkpoints kept, ranked by eval.best_metric; the latest is always kept."
    )


class WatchdogSection(BaseModel):
    """No run hangs: collectives time out, and a worker that stops making progress leaves its stacks.

    A collective (DDP's gradient all-reduce, FSDP's all-gathers, the log step's all-reduce, a checkpoint's
    barrier) waits at most `collective_timeout_s` for the other ranks; then it fails the attempt with a
    message naming the rank, the collective and the step, and Ray Train restarts from the last checkpoint
    (within scaling.max_failures). After the first step, a worker with no progress (step, sync, evaluation
    batch, checkpoint) for max(min_stall_s, stall_factor x the longest recent interval between them) writes
    every thread's Python stack to <run>/stacks/ (faulthandler: no ptrace, no dashboard needed).
    """

    model_config = ConfigDict(extra="forbid")

    collective_timeout_s: int = Field(
        900, ge=1, description="Seconds a collective waits for the other ranks before the attempt fails (the "
        "process group's timeout: gloo, and NCCL with async error handling). Generous: a rank may be slow to "
        "load or save a large checkpoint while the others wait.",
    )
    stall_factor: float = Field(
        20.0, gt=1, description="Stacks are dumped after this multiple of the longest recent interval between "
        "two progress points (steps, syncs, evaluation batches, checkpoints) without progress.",
    )
    min_stall_s: float = Field(
        300.0, gt=0, description="...but never before this many seconds without progress (a first evaluation "
        "or checkpoint has no history to compare with).",
    )
    enabled: bool = Field(
        True, description="Run the progress watchdog (stack dumps; a worker still stuck collective_timeout_s "
        "after its dump ends itself so the run restarts). The collective timeout applies either way.",
    )


class ExportSection(BaseModel):
    """The HF model `raylm train` writes at the end."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Literal["last", "best"] = Field(
        "last", description="Which checkpoint is exported (resume always uses the latest)."
    )
    dir: str | None = Field(None, description="Where the final HF model is exported (default: <run>/export).")


class ObserverSpec(BaseModel):
    """A loop observer (raylm.trainers.hooks.LoopObserver): told each batch's sample ids and each sharded
    checkpoint write, with no say in either (tests keep sample ledgers and crash windows with one)."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(
        ..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="'module:function', imported on every worker (the module must be on the workers' Python "
        "path) and called as function(rank, world, start_step, run_dir, **options).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The factory's keyword arguments (plain values: they travel in the config)."
    )


# Keys that moved from the flat `trainer` section into a sub-section (issue 14): old name -> new
# path under `trainer`. raylm.config moves them (files, overrides, search spaces) before validation.
MOVED_TRAINER_KEYS: dict[str, str] = {
    **{k: f"scaling.{k}" for k in ScalingSection.model_fields},
    **{k: f"optimizer.{k}" for k in OptimizerSection.model_fields},
    "schedule": "schedule.type",
    "warmup_steps": "schedule.warmup_steps",
    "min_lr_ratio": "schedule.min_lr_ratio",
    "eval_every": "eval.every",
    "eval_batches": "eval.batches",
    "best_metric": "eval.best_metric",
    "best_mode": "eval.best_mode",
    "checkpoint_every": "checkpoint.every",
    "num_to_keep": "checkpoint.num_to_keep",
    "export_checkpoint": "export.checkpoint",
    "export_dir": "export.dir",
}


class TrainerConfig(BaseModel):
    """The training run: task, length, batch, numerics; scaling, optimizer, schedule, eval,
    checkpoint and export in their own sections."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(
        "causal-lm", description="What is trained: its data, model head, loss, collate, metrics and per-file eval "
        "(raylm.tasks). causal-lm, masked-lm (data.nsp: MLM + NSP), sequence-classification (raylm.tasks.corpus); "
        "token-classification (NER, data.ner) and question-answering (extractive, data.qa): raylm.tasks.downstream; "
        "seq2seq (translation, summarization; data.seq2seq, trainer.generation): raylm.tasks.seq2seq; or a Task "
        "class outside raylm as module:Class.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if (problem := name_problem(name)) is not None:
            raise ValueError(problem)
        return name

    run_name: str = Field(
        "demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run directory under cluster.storage_path; the same name resumes the run.",
    )
    seed: int = Field(1337, description="Seed of the initial weights (the same on every rank) and of dropout.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps (the lr schedule's horizon).")
    max_train_seconds: float | None = Field(
        None, gt=0, description="Stop (eval + checkpoint) once training time, start-up excluded, reaches this."
    )
    batch_size: int | Literal["auto"] = Field(
        16, description="Examples (blocks) per worker per micro-step. auto: on a GPU, the largest that fits "
        "(a forward/backward probe at start-up, shrinking on out-of-memory); on CPU, 16.",
    )
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    global_batch_tokens: int | None = Field(
        None, gt=0, description="Tokens per optimizer step over all workers: sets grad_accum from the "
        "micro-batch and the worker count, so one recipe fits a 24 GB and a 141 GB card.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 on CPU."
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each transformer block (regional compilation: compile time stays "
        "short). auto: on for CUDA, off on CPU.",
    )
    fused_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="Fused kernels: Liger Kernel (fused linear cross-entropy; RMSNorm, RoPE, SwiGLU "
        "for llama when its blocks are not compiled) on CUDA when `raylm[kernels]` is installed, and a chunked cross-entropy that never "
        "materialises the full fp32 logits. auto: on for CUDA; on: also on CPU (chunked loss only).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker (CPU).")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="A non-finite loss or grad norm: stop the run, or skip that step's update."
    )
    log_every: int = Field(10, ge=1, description="Log training metrics every N steps.")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s per device for MFU (CPU or unknown GPU)."
    )
    scaling: ScalingSection = Field(default_factory=ScalingSection, description=ScalingSection.__doc__)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection, description=OptimizerSection.__doc__)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection, description=ScheduleSection.__doc__)
    eval: EvalSection = Field(default_factory=EvalSection, description=EvalSection.__doc__)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description=CheckpointSection.__doc__)
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig, description="FSDP2 options (scaling.strategy: fsdp).")
    export: ExportSection = Field(default_factory=ExportSection, description=ExportSection.__doc__)
    watchdog: WatchdogSection = Field(default_factory=WatchdogSection, description=WatchdogSection.__doc__)
    generation: GenerationSection = Field(default_factory=GenerationSection, description=GenerationSection.__doc__)
    observers: list[ObserverSpec] = Field(
        default_factory=list, description="Loop observers, built on every worker in this order (ObserverSpec).",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(f"batch_size ({self.batch_size}) must be at least 1, or 'auto'")
        s = self.scaling
        if s.strategy == "fsdp" and isinstance(s.num_workers, int) and s.num_workers % self.fsdp.replicate:
            raise ValueError(f"trainer.fsdp.replicate ({self.fsdp.replicate}) must divide scaling.num_workers "
                             f"({s.num_workers}): HSDP shards inside equal groups")
        if self.schedule.warmup_steps > self.max_steps:
            # A short try of a recipe (trainer.max_steps=8) should run, not fail on the recipe's warmup.
            log.warning("trainer.schedule.warmup_steps (%d) is above max_steps (%d): warming up over all %d steps",
                        self.schedule.warmup_steps, self.max_steps, self.max_steps)
            self.schedule.warmup_steps = self.max_steps
        return self


class WandbConfig(BaseModel):
    """Weights & Biases sink (rank 0; metrics.jsonl is always written)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["disabled", "offline", "online"] = Field(
        "offline",
        description="offline: runs stay on disk (wandb sync later). online needs WANDB_API_KEY "
        "in the environment; the key is never read from a config file.",
    )
    project: str = Field("raylm", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (user or team); unset: the key's default.")
    group: str | None = Field(None, description="W&B run group (a sweep sets it to the sweep's name).")
    tags: list[str] = Field(default_factory=list, description="W&B run tags.")


class TrackingConfig(BaseModel):
    """Where metrics go besides the run's metrics.jsonl, and how often progress is printed."""

    model_config = ConfigDict(extra="forbid")

    wandb: WandbConfig = Field(default_factory=WandbConfig, description=WandbConfig.__doc__)
    progress_every_s: float = Field(10.0, gt=0, description="Seconds between progress lines.")
