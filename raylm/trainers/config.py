"""The `model` and `trainer` config sections."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: Literal["gpt2", "llama", "bert", "roberta"] = Field(
        "gpt2", description="Architecture built from a config when `init_from` is unset."
    )
    init_from: str | None = Field(
        None, description="A local HF model directory (or raylm checkpoint) to start from."
    )
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    n_head: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["causal-lm", "masked-lm", "sequence-classification"] = "causal-lm"
    run_name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    num_workers: int | tuple[int, int] = Field(
        2, description="Ray Train workers (one process each). [min, max]: elastic -- the run starts with as many "
        "as the cluster fits (at least min), keeps training on fewer when a node is lost, and grows back "
        "to max when nodes return (each change restarts from the latest checkpoint; data.sharding auto "
        "becomes stride so every sample is still seen once).",
    )
    use_gpu: bool | Literal["auto"] = Field("auto", description="Use GPUs when the cluster has them.")
    elastic_resize_s: float = Field(
        60.0, ge=0, description="Elastic runs: seconds between looks for room to grow back to max workers "
        "(growing restarts the workers from the latest checkpoint).",
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Other Ray resources each worker reserves (custom ones too): "
        "e.g. {trainslot: 1} with one trainslot per node puts one worker per node.",
    )
    strategy: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 on CPU."
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
    max_steps: int = Field(200, ge=1, description="Optimizer steps (the lr schedule's horizon).")
    max_train_seconds: float | None = Field(
        None, gt=0, description="Stop (eval + checkpoint) once training time, start-up excluded, reaches this."
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr as a share of the peak.")
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm (0: off).")
    eval_every: int = Field(50, ge=1, description="Evaluate on validation every N steps.")
    eval_batches: int = Field(20, ge=1, description="Validation batches per worker per evaluation.")
    checkpoint_every: int = Field(50, ge=1, description="Checkpoint every N steps (and at the end).")
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(
        2, ge=0, description="Restarts after failures of the run itself (a crash, a lost node) before it fails.",
    )
    max_preemptions: int = Field(
        -1, ge=-1, description="Restarts after preemptions, counted apart from max_failures (-1: no limit). "
        "A preemption is a node drain (`ray drain-node --reason PREEMPTION`, KubeRay, spot reclaims) or a "
        "SIGTERM to a worker: the workers checkpoint at the next log step, then exit for a restart.",
    )
    log_every: int = Field(10, ge=1)
    seed: int = 1337
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker (CPU).")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="A non-finite loss or grad norm: stop the run, or skip that step's update."
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each transformer block (regional compilation: compile time stays "
        "short). auto: on for CUDA, off on CPU.",
    )
    fused_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="Fused kernels: Liger Kernel (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) "
        "for llama on CUDA when `raylm[kernels]` is installed, and a chunked cross-entropy that never "
        "materialises the full fp32 logits. auto: on for CUDA; on: also on CPU (chunked loss only).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    best_metric: str | None = Field(
        None, description="Metric that ranks checkpoints (default: the task's, val_loss or val_accuracy)."
    )
    best_mode: Literal["auto", "min", "max"] = Field("auto", description="auto: the task's direction.")
    export_checkpoint: Literal["last", "best"] = Field(
        "last", description="Which checkpoint `raylm train` exports (resume always uses the latest)."
    )
    export_dir: str | None = Field(
        None, description="Where the final HF model is exported (default: <run>/export)."
    )
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s per device for MFU (CPU or unknown GPU)."
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        if isinstance(self.num_workers, tuple) and not 1 <= self.num_workers[0] <= self.num_workers[1]:
            raise ValueError(f"num_workers {list(self.num_workers)}: an elastic range is [min, max] with "
                             "1 <= min <= max")
        if isinstance(self.num_workers, int) and self.num_workers < 1:
            raise ValueError(f"num_workers ({self.num_workers}) must be at least 1, or a [min, max] range")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(f"batch_size ({self.batch_size}) must be at least 1, or 'auto'")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) is above max_steps ({self.max_steps}): "
                "lower trainer.warmup_steps"
            )
        return self


class WandbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["disabled", "offline", "online"] = Field(
        "offline",
        description="offline: runs stay on disk (wandb sync later). online needs WANDB_API_KEY "
        "in the environment; the key is never read from a config file.",
    )
    project: str = "raylm"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wandb: WandbConfig = Field(default_factory=WandbConfig)
    progress_every_s: float = Field(10.0, gt=0, description="Seconds between progress lines.")
