"""Multiple-choice accuracy (MMLU, CMMLU, C-Eval, CSV / jsonl) for a model or an adapter. Same arguments as
`mftcoder eval multiple-choice`:

    python evals/multiple_choice.py --model DIR [--adapter DIR] --data mmlu/data --shots 5 --output mmlu.json

See docs/eval.md for the file formats, the prompts and the scoring.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from mftcoder.eval.multiple_choice import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
