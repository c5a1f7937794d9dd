"""mftcoder: multi-task fine-tuning of code LLMs."""

__version__ = "0.1.0"
