"""Serving an exported model: `raylm eval` (a raw file or a prepared split) and `raylm predict`, through
one dispatcher (`raylm.serving.dispatch`) that asks the model's task."""
