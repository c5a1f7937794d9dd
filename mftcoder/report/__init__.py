"""`mftcoder report`: plots and tables of one training run, or several compared, as one self-contained HTML."""
