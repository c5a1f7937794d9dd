"""Code evaluation: problem sets, pinned prompt formats, post-processing, sandboxed execution, pass@k (docs/eval.md)."""
