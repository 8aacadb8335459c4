"""raylm: train language models on Ray clusters."""

__version__ = "0.1.0"
