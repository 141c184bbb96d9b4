"""Rendering ``python -m torchext bench`` results: a plain table, Markdown, and a ratio chart.

All three take the report dict built by ``torchext.bench.run`` (the same dict ``--json``
prints), so a saved JSON file can be rendered again later.
"""

TITLES = {
    "linear": "Linear forward + backward (one layer, input gradient included)",
    "sgd": "SGD step, momentum 0.9, over the network's parameters",
    "step": "Whole training step (zero_grad, forward, MSE loss, backward, SGD step)",
    "fit": "One epoch (32 steps) of Trainer.fit against the stock loop",
    "ddp": ("Data-parallel training step per process (gloo, one thread each, batch per "
            "process): stock DDP against Trainer(process_group=...)"),
    "threads": ("Training step at 1 thread and at N threads (scaling = time at 1 / time at N: "
                "below 1, more threads are slower)"),
}


def _extra_columns(cell):
    """(header, value) of the columns only some kinds have."""
    columns = []
    if "processes" in cell:
        best = cell["steps_per_s"][cell["best_stock"]]
        columns += [("processes", str(cell["processes"])),
                    ("all-reduce", _time(cell["allreduce_s"])),
                    ("steps/s stock", f"{best:.0f}"),
                    ("steps/s torchext", f"{cell['steps_per_s']['torchext']:.0f}")]
    if "scaling" in cell:
        columns += [("scaling stock", f"{cell['scaling']['stock']:.2f}"),
                    ("scaling torchext", f"{cell['scaling']['torchext']:.2f}")]
    if "roofline" in cell:
        r = cell["roofline"]
        columns.append(("torchext roofline", f"{r['achieved']:.1f} {r['unit']} "
                                             f"({r['of_peak'] * 100:.0f}%)"))
    return columns


def _time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _sections(report):
    """(kind, contender names, rows of cells) for each kind, in the order they were run."""
    kinds = list(dict.fromkeys(r["kind"] for r in report["results"]))
    for kind in kinds:
        rows = [r for r in report["results"] if r["kind"] == kind]
        names = list(dict.fromkeys(n for r in rows for n in r["times"] if n != "torchext"))
        yield kind, names + ["torchext"], rows


def _head(rows, names):
    head = ["network", "batch", *(h for h, _ in _extra_columns(rows[0])), *names, "best stock",
            "ratio"]
    if any("ratio_fp32" in cell for cell in rows):
        head += ["best float32", "ratio fp32"]
    return head


def _row(cell, names):
    values = [cell["network"], "-" if cell["batch"] is None else str(cell["batch"])]
    values += [v for _, v in _extra_columns(cell)]
    for name in names:
        t = cell["times"].get(name)
        values.append("-" if t is None else f"{_time(t['median_s'])} ±{t['spread'] * 50:.0f}%")
    values += [cell["best_stock"].replace("torch ", ""), f"{cell['ratio']:.2f}"]
    if "ratio_fp32" in cell:
        values += [cell["best_stock_fp32"].replace("torch ", ""), f"{cell['ratio_fp32']:.2f}"]
    return values


def _header_lines(report):
    m, load = report["machine"], report["load_average"]
    device = m.get("gpu", m["cpu"])
    precision = report.get("precision")
    mixed = (f" (torchext with precision={precision!r}; ratio against the stock loops under "
             "torch.autocast, ratio fp32 against the float32 ones)") if precision else ""
    lines = [
        f"date: {report['date']}   command: {report['command']}",
        (f"machine: {device}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} "
         f"thread{'s' if m['torch_threads'] != 1 else ''}), torchext {m['torchext']}"
         f"{_cpu_kernels(m)}, Python {m['python']}"),
        f"load average (1, 5, 15 min): before {load['before']}, after {load['after']}",
        *_peaks_line(report),
        (f"{report['dtype']}{mixed} on {report['device']}; each cell: median per call over "
         f"{report['settings']['rounds']} alternating rounds, ± half the spread (max - min) "
         "in % of the median; ratio = best stock / torchext (> 1: torchext faster)"),
    ]
    return lines + [f"note: {note}" for note in report["notes"]]


def _cpu_kernels(machine):
    """The CPU kernels' choices, as recorded (reports written before they were are silent)."""
    if "cpu_kernels" not in machine:
        return ""
    blas = "BLAS" if machine["large_gemm"] == "BLAS" else "torchext's blocked tiles"
    return f" ({machine['cpu_kernels']} kernels, large products on {blas})"


def _peaks_line(report):
    peaks = report.get("peaks")
    if peaks is None:
        return []
    n, mib = peaks["gemm_n"], peaks["copy_bytes"] / 2**20
    return [(f"peaks measured here: GEMM {peaks['gemm_flop_s'] / 1e9:.0f} GFLOP/s ({n}x{n} mm), "
             f"copy {peaks['copy_byte_s'] / 1e9:.1f} GB/s read+write ({mib:.0f} MiB); roofline "
             "= torchext's GFLOP/s or GB/s (% of that peak)")]


def format_table(report):
    out = list(_header_lines(report))
    for kind, names, rows in _sections(report):
        head = _head(rows, names)
        body = [_row(cell, names) for cell in rows]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        out += ["", TITLES[kind]]
        for r in [head, *body]:
            out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                 for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def format_markdown(report):
    out = [f"- {line}" for line in _header_lines(report)]
    for kind, names, rows in _sections(report):
        head = _head(rows, names)
        out += ["", f"#### {TITLES[kind]}", "", "| " + " | ".join(head) + " |",
                "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        out += ["| " + " | ".join(_row(cell, names)) + " |" for cell in rows]
    return "\n".join(out)


def save_plot(path, report):
    """PNG of ratio (log) against the parameter count of each cell, one line per kind/batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=90)
    for kind, _, rows in _sections(report):
        for batch, processes in dict.fromkeys((r["batch"], r.get("processes")) for r in rows):
            cells = sorted((r for r in rows
                            if (r["batch"], r.get("processes")) == (batch, processes)),
                           key=lambda r: r["params"])
            label = kind if batch is None else f"{kind}, batch {batch}"
            if processes is not None:
                label += f", {processes} process{'es' if processes > 1 else ''}"
            ax.plot([c["params"] for c in cells], [c["ratio"] for c in cells], "o-", label=label)
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (layer or network)")
    ax.set_ylabel("best stock time / torchext time")
    m = report["machine"]
    ax.set_title(f"torchext vs stock torch {m['torch']}, {report['dtype']} on "
                 f"{m.get('gpu', report['device'])}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
