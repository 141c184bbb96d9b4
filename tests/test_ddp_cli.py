"""Data-parallel from the command line: the README's script and the main job under torchrun,
and the ``ddp`` bench kind.

Both start processes of their own (torchrun's workers; the bench's spawned ranks), each bounded
by a timeout. No timing is asserted.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bench import TINY

from torchext import bench
from torchext.bench_report import format_markdown, format_table

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed unavailable")


def test_main_job_under_torchrun_is_data_parallel_and_agrees_with_stock_ddp(tmp_path):
    checkpoint = tmp_path / "job.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "torchext", "--epochs", "2", "--samples", "300", "--no-progress", "--json",
           "--timeout", "60", "--save", str(checkpoint)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)  # rank 0 alone prints
    assert report["world_size"] == 2 and report["distributed_backend"] == "gloo"
    assert report["parity"]["agree"] and report["torchext"]["backend"] == "cpu"
    # 240 training samples (20% held out): 120 per rank, so one step of batch 128 per epoch
    assert report["steps"] == 2
    state = torch.load(checkpoint)
    assert state["step"] == 2


def test_ddp_bench_kind_times_one_and_two_processes(capsys):
    assert bench.main([*TINY, "--kinds", "ddp", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cells = [(r["network"], r["processes"]) for r in report["results"]]
    assert cells == [("seed 20-30-30-40", 1), ("8-8-8-8", 1), ("seed 20-30-30-40", 2),
                     ("8-8-8-8", 2)]
    for cell in report["results"]:
        assert set(cell["times"]) == {"torch DDP foreach", "torch DDP fused", "torchext"}
        assert cell["allreduce_s"] > 0 and cell["ratio"] > 0 and cell["batch"] == 4
    table = format_table(report)
    assert "Data-parallel training step" in table and "all-reduce" in table
    assert "| network | batch | processes | all-reduce |" in format_markdown(report)


def test_readme_ddp_script_runs_under_torchrun_as_shown(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- ci: ddp script -->\s*```python\n(.*?)\n```", readme, re.S)
    assert match, "README.md has no block marked <!-- ci: ddp script -->"
    (tmp_path / "train.py").write_text(match.group(1) + "\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "train.py"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    # Not anchored to lines: the two ranks write to one pipe, so one rank's line can land inside
    # the other's, between its text and its newline ("rank 1: ... 1.010895rank 0: ... 1.010895").
    epochs = re.findall(r"epoch (\d): loss \d+\.\d{6}", result.stdout)
    assert epochs == ["0", "1", "2"], output  # rank 0 alone prints them
    evaluations = re.findall(r"rank (\d): evaluation loss (\d+\.\d{6})", result.stdout)
    assert sorted(r for r, _ in evaluations) == ["0", "1"], output
    assert len({loss for _, loss in evaluations}) == 1, output  # a global mean: the same on both
    assert torch.load(tmp_path / "checkpoint.pt")["step"] == 3 * 16  # 2048 rows per rank, b128
