"""benchmarks/bench_vs_peers.py --quick: every row (mftcoder packed / one task / padded, TRL packed and default, the
transformers Trainer, the bare loop) trains in its own process and reports what the table needs. Only invariants
that do not depend on timing are checked, never speed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKED = ("mftcoder_pack", "mftcoder_pack_1task", "trl_packed", "bare_loop")
PADDED = ("mftcoder_padding", "trl_default", "hf_trainer")


@pytest.mark.slow
def test_quick_run_reports_every_row(tmp_path):
    out = tmp_path / "peers.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_vs_peers.py"), "--quick", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == set(PACKED + PADDED)
    per_step = report["tokens_per_step"]
    for name, row in rows.items():
        (run,) = row["rounds"]
        assert "error" not in run, (name, run.get("error"))
        assert run["steps"] == 4 and run["timed_steps"] == 3 and len(run["step_seconds"]) == 3, name
        assert run["real_tokens"] > 0 and run["real_tokens_per_s"] > 0 and run["peak_memory_bytes"] > 2**20, name
        assert run["time_to_first_step_s"] > 0, name
        if name in PACKED:  # rows of at most seq_length positions, micro 1 x accumulation 2, nothing padded
            assert run["pad_fraction"] == 0.0, name
            assert 0.5 * per_step * 3 <= run["positions"] <= per_step * 3, (name, run["positions"])
        else:  # padded batches of several samples: some positions are padding
            assert run["pad_fraction"] > 0.02, (name, run["pad_fraction"])
    assert rows["mftcoder_pack"]["tokens_per_s_vs_reference"] == [1.0]
    assert report["data"]["min_len"] < 120 and report["data"]["max_len"] <= 512
    assert "mftcoder_pack" in r.stdout and "real tok/s" in r.stdout
