"""``python -m torchext``: arguments, data files, bad input, JSON report and the parity verdict.

``main(argv)`` runs in-process on tiny data (a few steps), so the whole file stays fast; one
subprocess checks that ``python -m torchext --help`` works as a command.
"""

import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import torchext
from torchext.__main__ import main
from torchext.cli_data import DataError, load_data, teacher_task
from torchext.cli_job import stock_fit, stock_twin

TINY = ["--samples", "96", "--epochs", "2", "--batch-size", "16", "--no-progress"]


def run_json(capsys, *argv):
    code = main([*TINY, "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out)


def expect_error(capsys, *argv, match):
    """Exit status 2 and a single stderr line that contains ``match``."""
    assert main([*TINY, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m torchext: error:") and match in err, err


# ---------------------------------------------------------------------------- arguments

def test_help_runs_as_a_command(tmp_path):
    # From a neutral folder: in the source tree, `-m` would import the unbuilt source package.
    result = subprocess.run([sys.executable, "-m", "torchext", "--help"], check=False,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--hidden", "--loss", "--save", "--plot", "--json", "bench", "check"):
        assert option in result.stdout


BAD_ARGUMENTS = [
    ["--hidden", "a,b"], ["--hidden", "30,0"], ["--hidden", str(10**30)], ["--epochs", "0"],
    ["--batch-size", "-1"], ["--device", "tpu"], ["--held-out", "1.5"], ["--held-out", "nan"],
    ["--loss", "hinge"], ["--activation", "elu"], ["--dtype", "float16"], ["--lr", "-1"],
    ["--lr", "nan"], ["--lr", "inf"], ["--lr", "fast"], ["--momentum", "-1"],
    ["--seed", str(2**70)], ["--seed", "-1"], ["--epochs", str(10**30)],
    ["--batch-size", str(10**30)], ["--threads", "100000"], ["--threads", "0"],
    ["--samples", str(10**12)], ["--targets", "0"], ["--no-such-option"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*TINY, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m torchext: error: "), err


@pytest.mark.parametrize("argv", [["--rounds", "-1"], ["--rounds", "0"], ["--block-ms", "0"],
                                  ["--block-ms", "nan"], ["--threads", "100000"],
                                  ["--widths", "0"], ["--batch-sizes", "8,-2"], ["--kinds", "x"]],
                         ids=" ".join)
def test_bench_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    from torchext.bench import main as bench_main

    with pytest.raises(SystemExit) as info:
        bench_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m torchext bench: error: "), err


def test_a_bad_argument_as_a_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torchext", "--batch-size", str(10**30)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cuda_without_a_device_is_a_usage_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--device", "cuda"])
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["check"], ["--check"], ["check", "--dtype", "float64"]])
def test_check_keeps_the_linear_parity_check(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "built against torch" in out and "parity: all match within tolerance" in out


# ---------------------------------------------------------------------------- the main job

@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-10)])
def test_json_report_and_parity_verdict(dtype, rtol, capsys):
    code, report = run_json(capsys, "--dtype", dtype)
    assert code == 0
    assert report["sizes"] == [20, 30, 30, 40] and report["dtype"] == dtype
    assert report["samples"] == {"train": 77, "held_out": 19}
    assert report["steps"] == 2 * 5
    for name in ("torchext", "torch"):
        run = report[name]
        assert len(run["epoch_losses"]) == 2 and run["train_loss"] == run["epoch_losses"][-1]
        assert run["seconds"] > 0 and run["steps_per_second"] > 0 and run["held_out_loss"] > 0
    assert report["torchext"]["backend"] == "cpu"
    parity = report["parity"]
    assert parity["rtol"] == rtol and parity["agree"] is True
    assert parity["max_rel_loss_difference"] <= rtol
    assert parity["max_rel_param_difference"] <= rtol
    assert report["speedup"] > 0


def test_table_output(capsys):
    assert main([*TINY, "--hidden", "8", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    for text in ("MLP 20-8-40 tanh", "torchext.Trainer", "stock PyTorch loop", "speed-up:",
                 "parity: agree"):
        assert text in out


def test_no_held_out_split(capsys):
    code, report = run_json(capsys, "--held-out", "0")
    assert code == 0 and report["samples"] == {"train": 96, "held_out": 0}
    assert report["torch"]["held_out_loss"] is None and report["parity"]["agree"]


def test_cross_entropy_on_the_teacher_task(capsys):
    code, report = run_json(capsys, "--loss", "cross_entropy", "--hidden", "")
    assert code == 0 and report["sizes"] == [20, 40] and report["parity"]["agree"]


def test_mismatch_gives_exit_status_1(monkeypatch, capsys):
    # A stock loop that skips its updates must be reported as a parity failure.
    import torchext.cli_job as cli

    def frozen(model, optimizer, loss_fn, x, y, epochs, batch_size, generator, progress,
               world=None, seed=0):
        return [1.0] * epochs

    monkeypatch.setattr(cli, "stock_fit", frozen)
    code, report = run_json(capsys)
    assert code == 1 and report["parity"]["agree"] is False


def test_stock_fit_reports_progress_and_matches_the_trainer():
    x, y = teacher_task(40, 20, 40, "mse", dtype=torch.float64)
    torch.manual_seed(0)
    model = torchext.nn.MLP([20, 5, 40], dtype=torch.float64)
    stock = stock_twin(model)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=0.1), "mse")
    calls = []
    ours = stock_fit(stock, torch.optim.SGD(stock.parameters(), lr=0.1), torch.nn.MSELoss(), x, y,
                     3, 16, torch.Generator().manual_seed(5), lambda *a: calls.append(a))
    theirs = trainer.fit(x, y, epochs=3, batch_size=16, generator=torch.Generator().manual_seed(5),
                         progress=False)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-10, atol=0)
    ends = [c[:3] for c in calls if not math.isnan(c[3])]  # the end-of-epoch reports
    assert ends == [(0, 3, 3), (1, 3, 3), (2, 3, 3)]


def test_save_writes_a_trainer_checkpoint(tmp_path, capsys):
    path = tmp_path / "run.pt"
    code, report = run_json(capsys, "--save", str(path))
    assert code == 0 and report["saved"] == str(path)
    model = torchext.nn.MLP([20, 30, 30, 40])
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=0.1))
    trainer.load(path)
    assert trainer.steps == report["steps"]


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    assert main([*TINY, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    expect_error(capsys, "--plot", str(tmp_path / "x.png"), match="matplotlib")


@pytest.mark.parametrize("option", ["--save", "--plot"])
def test_output_into_a_missing_folder(option, tmp_path, capsys):
    expect_error(capsys, option, str(tmp_path / "no" / "such.out"), match="does not exist")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_save_is_checked_before_any_training(kind, tmp_path, capsys, monkeypatch):
    import torchext.__main__ as cli

    monkeypatch.setattr(cli, "run_job", lambda args: pytest.fail("training started"))
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = "/dev/null"
    expect_error(capsys, "--save", str(path), match="only a regular file is ever replaced")
    assert kind != "device" or stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_save_through_a_symlink_updates_its_target(tmp_path, capsys):
    target = tmp_path / "real.pt"
    target.write_bytes(b"")
    link = tmp_path / "run.pt"
    link.symlink_to(target)
    code, _ = run_json(capsys, "--save", str(link))
    assert code == 0 and link.is_symlink() and torch.load(target)["step"] == 2 * 5


# ---------------------------------------------------------------------------- data files

def write_pt(path, **tensors):
    torch.save(tensors, path)
    return path


def test_pt_data(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    path = write_pt(tmp_path / "d.pt", x=torch.randn(50, 7, generator=gen),
                    y=torch.randn(50, 3, generator=gen))
    code, report = run_json(capsys, "--data", str(path))
    assert code == 0 and report["sizes"] == [7, 30, 30, 3] and report["task"] == str(path)
    assert report["samples"] == {"train": 40, "held_out": 10}


def test_npz_data_with_class_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((60, 5)), y=rng.integers(0, 4, 60))
    code, report = run_json(capsys, "--data", str(path), "--loss", "cross_entropy",
                            "--dtype", "float64")
    assert code == 0 and report["sizes"] == [5, 30, 30, 4] and report["parity"]["agree"]


def test_csv_data_with_header_and_two_targets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("# made up\na,b,c,t1,t2\n1,2,3,4,5\n6,7,8,9,10\n\n11,12,13,14,15\n")
    x, y = load_data(path, "mse", targets=2)
    assert x.shape == (3, 3) and y.shape == (3, 2) and x.dtype == torch.float32
    assert y[2].tolist() == [14.0, 15.0]


def test_csv_data_end_to_end(tmp_path, capsys):
    rows = [f"{i % 7},{i % 5},{(i * 3) % 11},{i % 2}" for i in range(40)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    code, report = run_json(capsys, "--data", str(path), "--loss", "cross_entropy")
    assert code == 0 and report["sizes"] == [3, 30, 30, 2]


@pytest.mark.parametrize("name,content,match", [
    ("d.csv", "1,2,3\n4,x,6\n", "line 2, column 2: 'x' is not a number"),
    ("d.csv", "1,2,3\n4,5\n", "line 2: 2 columns, expected 3"),
    ("d.csv", "1\n2\n", "leave no features"),
    ("d.csv", "a,b\n", "no data rows"),
    ("d.txt", "1,2\n", "unknown data format"),
    ("d.pt", "not a pickle", "not a readable torch.save file"),
    ("d.npz", "not a zip", "not a readable .npz archive"),
])
def test_bad_files(tmp_path, capsys, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    expect_error(capsys, "--data", str(path), match=match)


@pytest.mark.parametrize("tensors,loss,match", [
    ({"x": torch.randn(10, 3)}, "mse", "missing 'y'"),
    ({"inputs": torch.randn(10, 3), "y": torch.randn(10)}, "mse", "missing 'x'"),
    ({"x": torch.randn(10, 3), "y": torch.randn(9)}, "mse", "'x' has 10 samples but 'y' has 9"),
    ({"x": torch.randn(10), "y": torch.randn(10)}, "mse", "'x' must be 2-D"),
    ({"x": torch.randn(10, 2, 2), "y": torch.randn(10)}, "mse", "'x' must be 2-D"),
    ({"x": torch.randn(10, 3), "y": torch.randn(10) + 0.5}, "cross_entropy", "whole-number"),
    ({"x": torch.randn(10, 3), "y": torch.randn(10, 2)}, "cross_entropy", "1-D class indices"),
    ({"x": torch.full((10, 3), float("nan")), "y": torch.randn(10)}, "mse", "NaN"),
    ({"x": torch.randn(0, 3), "y": torch.randn(0)}, "mse", "empty"),
])
def test_bad_tensors(tmp_path, capsys, tensors, loss, match):
    path = write_pt(tmp_path / "d.pt", **tensors)
    expect_error(capsys, "--data", str(path), "--loss", loss, match=match)


def test_pt_file_that_is_not_a_dict(tmp_path, capsys):
    path = tmp_path / "d.pt"
    torch.save(torch.randn(3), path)
    expect_error(capsys, "--data", str(path), match="expected a dict")


def test_a_huge_class_label_is_refused(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("1,2,0\n3,4,1\n5,6,1000000000\n")
    expect_error(capsys, "--data", str(path), "--loss", "cross_entropy",
                 match="class label 1000000000 would need an output layer of 1000000001 classes")


def test_a_network_of_absurd_size_is_refused(capsys):
    expect_error(capsys, "--hidden", "1000000,1000000", match="would have 1e+12 parameters")


def test_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeff1.5,2,3\n4,5,6\n".encode("utf-8"))
    x, y = load_data(path, "mse")
    assert x[0].tolist() == [1.5, 2.0] and y.tolist() == [[3.0], [6.0]]


def test_data_that_is_a_folder_or_a_fifo(tmp_path, capsys):
    expect_error(capsys, "--data", str(tmp_path), match="is a directory, not a data file")
    os.mkfifo(tmp_path / "pipe.csv")
    expect_error(capsys, "--data", str(tmp_path / "pipe.csv"), match="is not a regular file")


def test_missing_file_and_wrong_npz_keys(tmp_path, capsys):
    expect_error(capsys, "--data", str(tmp_path / "nope.pt"), match="no such file")
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((4, 2)), y=np.zeros(4))
    expect_error(capsys, "--data", str(path), match="missing 'x'")


def test_load_data_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "missing.csv", "mse")


def test_teacher_task_is_seeded():
    x1, y1 = teacher_task(30, 20, 40, "cross_entropy", seed=3)
    x2, y2 = teacher_task(30, 20, 40, "cross_entropy", seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.dtype == torch.long and 0 <= y1.min() and y1.max() < 40
