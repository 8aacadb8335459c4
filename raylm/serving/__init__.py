"""Serving an exported model: `raylm export` (a checkpoint -> a `from_pretrained` directory, `export.py`),
`raylm eval` (a raw file or a prepared split), `raylm predict` and `raylm generate` through one dispatcher that asks the
model's task (`dispatch.py`), and `raylm report` (a run's curves and summary, `report.py`)."""
