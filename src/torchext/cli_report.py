"""The report of ``python -m torchext``: a table on stdout, and a plot of both loss curves."""

import torch

import torchext


def print_report(report):
    threads = report["torch_threads"]
    print(f"torchext {torchext.__version__} (torch {torch.__version__}, {threads} "
          f"thread{'s' if threads != 1 else ''}) on {report['device']}, {report['dtype']}; "
          f"Trainer backend: {report['torchext']['backend']}")
    if report.get("world_size", 1) > 1 or report.get("distributed_backend"):
        print(f"data-parallel: {report['world_size']} processes ({report['distributed_backend']}"
              f"), each on its DistributedSampler shard; stock loop: DistributedDataParallel")
    print(f"data: {report['task']}: {report['samples']['train']} training / "
          f"{report['samples']['held_out']} held-out samples")
    print(f"network: MLP {'-'.join(map(str, report['sizes']))} {report['activation']}, "
          f"{report['loss']} loss, SGD lr {report['lr']:g} momentum {report['momentum']:g}, "
          f"batch {report['batch_size']}, {report['epochs']} epochs ({report['steps']} steps)")
    print()
    print(f"{'':<20}{'steps/s':>10}{'time':>10}{'train loss':>14}{'held-out loss':>15}")
    for name, label in (("torchext", "torchext.Trainer"), ("torch", "stock PyTorch loop")):
        run = report[name]
        print(f"{label:<20}{run['steps_per_second'] or 0:>10.0f}{run['seconds']:>9.3f}s"
              f"{_fmt(run['train_loss']):>14}{_fmt(run['held_out_loss']):>15}")
    parity = report["parity"]
    print()
    if report["speedup"] is not None:
        print(f"speed-up: {report['speedup']:.2f}x")
    print(f"parity: {'agree' if parity['agree'] else 'DIFFER'} within rtol {parity['rtol']:g} "
          f"(max rel. difference: losses {parity['max_rel_loss_difference']:.1e}, "
          f"parameters {parity['max_rel_param_difference']:.1e})")
    if report["saved"]:
        print(f"checkpoint: {report['saved']}")
    if report["plot"]:
        print(f"plot: {report['plot']}")


def _fmt(value):
    return "-" if value is None else f"{value:.6g}"


def save_plot(path, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    epochs = range(1, report["epochs"] + 1)
    ax.plot(epochs, report["torchext"]["epoch_losses"], "-", lw=2.5, label="torchext.Trainer")
    ax.plot(epochs, report["torch"]["epoch_losses"], "o--", ms=4, label="stock PyTorch loop")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"mean training loss ({report['loss']})")
    ax.set_title(f"MLP {'-'.join(map(str, report['sizes']))}, {report['dtype']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
