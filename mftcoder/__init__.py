"""mftcoder: multi-task fine-tuning of code LLMs."""

__version__ = "0.1.0"

# before any of our modules can import accelerate/transformers/peft (and through them DeepSpeed): see runtime.py
from mftcoder import runtime as _runtime  # noqa: E402

_runtime.choose_deepspeed_accelerator()
