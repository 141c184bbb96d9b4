"""``python -m torchext bench``: the harness on a tiny matrix produces well-formed output.

No timing is asserted (DESIGN: no timed assertions in tests); only the shape of the report,
the tables, the guards around optional contenders, and the optional plot.
"""

import json
import sys

import pytest
import torch

from torchext import bench
from torchext.bench_report import format_markdown, format_table

TINY = ["--quick", "--widths", "8", "--batch-sizes", "4", "--rounds", "2", "--block-ms", "1"]


@pytest.fixture(scope="module")
def report():
    parser = bench.build_parser()
    argv = [*TINY, "--kinds", "linear,sgd,step,fit"]
    return bench.run(parser.parse_args(argv), argv)


def test_report_shape(report):
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["command"].startswith("python -m torchext bench --quick")
    for key in ("cpu", "cores", "torch_threads", "torch", "torchext", "python", "cpu_kernels",
                "large_gemm"):
        assert key in report["machine"]
    assert set(report["load_average"]) == {"before", "after"}
    assert report["settings"]["compile"] is False and report["notes"]
    kinds = [(r["kind"], r["network"], r["batch"]) for r in report["results"]]
    assert kinds == [("linear", "seed 20-30", 4), ("linear", "8-8", 4),
                     ("sgd", "seed 20-30-30-40", None), ("sgd", "8-8-8-8", None),
                     ("step", "seed 20-30-30-40", 4), ("step", "8-8-8-8", 4),
                     ("step", "784-256-256-10 cross-entropy", 256),
                     ("fit", "seed 20-30-30-40", 4)]
    for cell in report["results"]:
        assert "torchext" in cell["times"] and cell["best_stock"] in cell["times"]
        assert cell["best_stock"] != "torchext" and cell["ratio"] > 0
        for t in cell["times"].values():
            assert t["median_s"] > 0 and t["spread"] >= 0 and t["iters"] >= 1
    assert set(report["results"][4]["times"]) == {"torch foreach", "torch fused", "torchext"}
    assert report["results"][2]["params"] == 30 * 20 + 30 + 30 * 30 + 30 + 40 * 30 + 40
    peaks = report["peaks"]
    assert peaks["gemm_flop_s"] > 0 and peaks["copy_byte_s"] > 0
    for cell in report["results"]:  # torchext's rate over the cell's work, against the peak
        r = cell["roofline"]
        assert r["unit"] == ("GB/s" if cell["kind"] == "sgd" else "GFLOP/s")
        peak = peaks["copy_byte_s"] if cell["kind"] == "sgd" else peaks["gemm_flop_s"]
        assert r["of_peak"] == pytest.approx(r["achieved"] * 1e9 / peak)
    # step 8-8-8-8 at batch 4: forward and weight gradients of 3 layers, input gradients of 2
    step = report["results"][5]
    assert step["roofline"]["achieved"] * 1e9 * step["times"]["torchext"]["median_s"] == \
        pytest.approx(2 * 4 * (3 * 64 + 3 * 64 + 2 * 64))
    json.dumps(report)  # JSON-ready


def test_table_and_markdown(report):
    table = format_table(report)
    assert "load average" in table and "Whole training step" in table
    assert "torch foreach" in table and "ratio" in table
    assert "peaks measured here" in table and "torchext roofline" in table
    markdown = format_markdown(report)
    lines = markdown.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("| network")]
    assert len(headers) == 4
    for i in headers:  # header, separator, then rows with as many cells
        cells = lines[i].count("|")
        assert lines[i + 1].startswith("|---") and lines[i + 1].count("|") == cells
        assert lines[i + 2].count("|") == cells


@pytest.mark.parametrize("flag,check", [
    ("--json", lambda out: json.loads(out)["results"]),
    ("--markdown", lambda out: "| network" in out),
    (None, lambda out: "SGD step" in out),
])
def test_main_outputs(flag, check, capsys):
    argv = [*TINY, "--kinds", "sgd", "--widths", ""] + ([flag] if flag else [])
    assert bench.main(argv) == 0
    assert check(capsys.readouterr().out)


def test_thread_scaling_cells():
    threads = torch.get_num_threads()
    parser = bench.build_parser()
    argv = [*TINY, "--kinds", "threads", "--threads", "2"]
    try:
        torch.set_num_threads(2)
        report = bench.run(parser.parse_args(argv), argv)
        assert torch.get_num_threads() == 2  # restored after the 1-thread blocks
    finally:
        torch.set_num_threads(threads)
    cells = report["results"]
    assert [(c["network"], c["batch"]) for c in cells] == [
        ("10-46-46-10", 128), ("seed 20-30-30-40", 2048), ("784-256-256-10 cross-entropy", 256),
        ("8-8-8-8", 4)]
    for cell in cells:
        assert set(cell["times"]) == {"torch fused 1 thread", "torch fused 2 threads",
                                      "torchext 1 thread", "torchext"}
        times = {name: t["median_s"] for name, t in cell["times"].items()}
        assert cell["scaling"]["torchext"] == pytest.approx(
            times["torchext 1 thread"] / times["torchext"])
        assert cell["scaling"]["stock"] == pytest.approx(
            times["torch fused 1 thread"] / times["torch fused 2 threads"])
    assert "scaling torchext" in format_table(report)


def test_a_failing_compile_is_dropped_with_a_note(monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no compiler here\nmore detail")

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Broken())
    notes = []
    cell = bench.run_cell("linear", [8, 8], 4, "cpu", torch.float32, True, 2, 1e-3, notes)
    assert set(cell["times"]) == {"torch eager", "torchext"}
    assert notes == ["torch.compile skipped for linear [8, 8] b4: RuntimeError: no compiler here"]


def test_measure_alternates_and_counts():
    calls = []
    times = bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          bench.Timer("cpu"), rounds=3, block_s=0.0, warmup=1)
    assert set(times) == {"a", "b"} and all(t["iters"] == 1 for t in times.values())
    # warm-up, calibration, then rounds starting with a, b, a
    assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]


def test_bad_arguments(capsys):
    for argv in (["--kinds", "gemm"], ["--widths", "x"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as info:
            bench.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_plot(tmp_path, report):
    pytest.importorskip("matplotlib")
    from torchext.bench_report import save_plot

    path = tmp_path / "ratio.png"
    save_plot(path, report)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert bench.main([*TINY, "--plot", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cells_include_the_graph_contender():
    notes = []
    cell = bench.run_cell("step", [8, 8], 4, "cuda", torch.float32, False, 2, 1e-3, notes)
    assert "torch cuda graph" in cell["times"] or notes


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_precision_times_mixed_trainers_against_autocast_and_float32(precision):
    parser = bench.build_parser()
    argv = [*TINY, "--precision", precision, "--widths", "", "--networks", "8-16-4"]
    report = bench.run(parser.parse_args(argv), argv)
    assert report["precision"] == precision
    cells = [(r["kind"], r["network"], r["batch"]) for r in report["results"]]
    assert cells == [("step", "seed 20-30-30-40", 4), ("step", "8-16-4", 4),
                     ("step", "784-256-256-10 cross-entropy", 256), ("fit", "seed 20-30-30-40", 4)]
    stock = {"torch foreach", "torch fused", "torch autocast foreach", "torch autocast fused"}
    for cell in report["results"]:
        assert set(cell["times"]) == stock | {"torchext"}
        assert cell["best_stock"].startswith("torch autocast") and cell["ratio"] > 0
        assert cell["best_stock_fp32"] in {"torch foreach", "torch fused"}
        assert cell["ratio_fp32"] > 0
    table = format_table(report)
    assert f"precision={precision!r}" in table and "ratio fp32" in table
    lines = format_markdown(report).splitlines()
    header = next(line for line in lines if line.startswith("| network"))
    assert header.count("|") == lines[lines.index(header) + 2].count("|")


@pytest.mark.parametrize("argv,message", [
    (["--precision", "bf16"], "invalid choice: 'bf16'"),
    (["--precision", "bf16-mixed", "--dtype", "float64"], "trains float32 models"),
    (["--precision", "16-mixed", "--kinds", "sgd,step"], "not sgd"),
    (["--networks", "8-x-4"], "bad network '8-x-4'"),
    (["--networks", "8"], "bad network '8'"),
])
def test_bad_precision_and_network_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
