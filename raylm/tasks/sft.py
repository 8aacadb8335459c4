"""sft (`trainer.task: sft`): instruction tuning of a decoder LM on chat rows (issue 29; being built)."""

from __future__ import annotations

from raylm.tasks.base import LabelledTask


class SFT(LabelledTask):
    name = "sft"
