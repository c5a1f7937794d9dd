"""Code benchmarks in every language: HumanEval, HumanEval-X, MultiPL-E, MBPP. Same arguments as
`mftcoder eval humaneval` (and evals/humaneval.py); the format and language of each --problems file are detected.

    # HumanEval-X, all languages in one run (files from THUDM/CodeGeeX, codegeex/benchmark/humaneval-x/<lang>/data/)
    python evals/code_eval.py --model DIR --prompt_format mftcoder --n 1 --temperature 0 --k 1 --out humaneval_x.json \
        --problems humaneval_python.jsonl.gz humaneval_cpp.jsonl.gz humaneval_java.jsonl.gz \
                   humaneval_js.jsonl.gz humaneval_go.jsonl.gz humaneval_rust.jsonl.gz
    python evals/code_eval.py --problems humaneval_cpp.jsonl.gz --canonical --out cpp.json   # check the toolchain

    # MultiPL-E (the nuprl/MultiPL-E dataset, e.g. config humaneval-cpp, exported to jsonl; it has no solutions)
    python evals/code_eval.py --model DIR --prompt_format completion --n 10 --temperature 0.2 --k 1,10 \
        --problems humaneval-cpp.jsonl humaneval-rs.jsonl --out multipl_e.json

    # MBPP (google-research/mbpp mbpp.jsonl): the 500 test problems (task_ids 11-510), 3-shot with a base model
    python evals/code_eval.py --model DIR --prompt_format completion --problems mbpp.jsonl --mbpp_split test \
        --k 1 --out mbpp.json

    # score existing samples (task_id, completion), or leave out languages this machine cannot build
    python evals/code_eval.py --problems humaneval_go.jsonl.gz --samples go.samples.jsonl --out go.json
    python evals/code_eval.py --problems humaneval_*.jsonl.gz --canonical --skip_missing_toolchains --out x.json

The results JSON has pass@k overall and per language (`per_language`), and a per-language table is printed at the
end. See docs/eval.md (Code benchmarks) for the formats, the sandbox and the packages each language needs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from mftcoder.eval.humaneval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
