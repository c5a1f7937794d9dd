"""`python -m mftcoder.eval humaneval ...`"""
import sys

from mftcoder.eval.cli import main

sys.exit(main())
