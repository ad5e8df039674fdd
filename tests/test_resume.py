"""An evaluation killed mid-run (SIGKILL, no chance to clean up) and started again with the same cache gives the
same table as a run that was never interrupted: no row lost, none duplicated, finished configurations reused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ARGS = ["--model", "tiny", "--n", "3", "--method", "random", "--seed", "0,1,2,3,4,5", "--retention", "0.5",
        "--batch-size", "1", "--max-new-tokens", "3", "--threads", "1", "--no-progress"]
N_CONFIGS = 1 + 6  # the unpruned baseline and random under six seeds
KEY = ["id", "method", "retention", "seed"]


def evaluate_cli(cwd: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "tpx", "evaluate", *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def test_killed_evaluation_resumes_to_the_same_table(tmp_path):
    cache = tmp_path / "cache"
    proc = evaluate_cli(tmp_path, "--cache-dir", str(cache), "--out", str(tmp_path / "killed.csv"))
    deadline = time.monotonic() + 600
    while not list(cache.glob("*.parquet")):  # wait until at least one configuration is finished and cached
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no configuration was cached in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = {p: p.stat().st_mtime_ns for p in cache.glob("*.parquet")}
    assert 1 <= len(kept) < N_CONFIGS, f"killed mid-run, yet {len(kept)} of {N_CONFIGS} configurations are cached"
    assert not (tmp_path / "killed.csv").exists()

    finished(evaluate_cli(tmp_path, "--cache-dir", str(cache), "--out", str(tmp_path / "resumed.csv")))
    finished(evaluate_cli(tmp_path, "--out", str(tmp_path / "whole.csv")))  # never interrupted, no cache

    resumed, whole = pd.read_csv(tmp_path / "resumed.csv"), pd.read_csv(tmp_path / "whole.csv")
    assert len(whole) == 24 * N_CONFIGS  # 3 samples x 8 organism tasks per configuration
    assert not resumed.duplicated(KEY).any()
    pd.testing.assert_frame_equal(resumed, whole)
    assert len(list(cache.glob("*.parquet"))) == N_CONFIGS
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # what was finished before the kill was reused
