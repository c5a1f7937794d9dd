"""HumanEval pass@k for a model, an adapter or a samples file. Same arguments as `mftcoder eval humaneval`:

    python evals/humaneval.py --model DIR [--adapter DIR] --prompt_format mftcoder --n 1 --temperature 0 \
        --k 1,10 --out results.json [--limit N]

See docs/eval.md for the prompt formats and the sandbox.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from mftcoder.eval.humaneval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
