"""The arguments of ``python -m torchext`` (the main job and ``check``): parser and checks.

Every option is range-checked by its type (see ``torchext.cli_support``), so a bad value is one
line on stderr and exit status 2, never a traceback. Output paths (``--save``, ``--plot``) are
checked before any training starts, by the rules ``Trainer.save`` applies.
"""

import argparse

from ._checkpoint import CheckpointError, writable_target
from .cli_data import MAX_SAMPLES, MAX_TARGETS, DataError
from .cli_support import ArgumentParser, int_list, integer, real
from .nn import ACTIVATIONS

PROG = "python -m torchext"
MAX_EPOCHS = 10**6
MAX_BATCH = 2**31 - 1
MAX_WIDTH = 10**6
MAX_THREADS = 1024  # far beyond any machine's cores; torch's pool crashes on absurd counts
MAX_SEED = 2**63 - 1
MAX_TIMEOUT_S = 86400.0


def build_parser():
    parser = ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the walk-through's network with torchext.Trainer and with the stock "
                    "PyTorch loop from identical weights; print speed, losses and whether the "
                    "two agree (exit status 1 if not, 2 for bad arguments or data).",
        epilog="other commands:\n"
               f"  {PROG} bench [--quick] ...  benchmark matrix against stock torch"
               " (bench --help)\n"
               f"  {PROG} check                build info and Linear parity on the seed shapes")
    add = parser.add_argument
    add("--check", action="store_true",
        help="only print the build info and check torchext.nn.Linear against torch.nn.Linear "
             "on the seed shapes (same as the 'check' command)")
    add("--device", default="cpu", help="cpu or cuda (default: cpu)")
    add("--dtype", default="float32", choices=["float32", "float64"],
        help="parameter and data type; parity tolerance 1e-5 for float32, 1e-10 for float64 "
             "(default: float32)")
    add("--epochs", type=integer(1, MAX_EPOCHS), default=5, help="default: 5")
    add("--batch-size", type=integer(1, MAX_BATCH), default=128, help="default: 128")
    add("--hidden", type=int_list(1, MAX_WIDTH, what="hidden sizes"), default=[30, 30],
        help="hidden layer sizes, comma-separated; '' for none (default: 30,30)")
    add("--activation", default="relu", choices=list(ACTIVATIONS),
        help="between layers (default: relu)")
    add("--loss", default="mse", choices=["mse", "cross_entropy"],
        help="mse regresses the targets; cross_entropy takes class indices (on the built-in "
             "task: the teacher's argmax) (default: mse)")
    add("--lr", type=real(0), default=1e-2, help="SGD learning rate, >= 0 (default: 0.01)")
    add("--momentum", type=real(0), default=0.9, help="SGD momentum, >= 0 (default: 0.9)")
    add("--data", metavar="PATH",
        help="train on this file instead of the built-in teacher task: .pt (torch.save'd dict "
             "of tensors x, y), .npz (arrays x, y) or .csv (last --targets columns are the "
             "target; for cross_entropy the last column is the class index; an optional header "
             "line)")
    add("--targets", type=integer(1, MAX_TARGETS), default=1,
        help="number of target columns at the end of a .csv (mse; default: 1)")
    add("--samples", type=integer(1, MAX_SAMPLES), default=5120,
        help="size of the built-in task, held-out part included (default: 5120)")
    add("--held-out", type=real(0, 1, hi_open=True), default=0.2,
        help="fraction of the samples held out from training, in [0, 1) (default: 0.2)")
    add("--seed", type=integer(0, MAX_SEED), default=0,
        help="seed for the task, the initial weights and the shuffling (default: 0)")
    add("--save", metavar="PATH",
        help="write the trained torchext.Trainer checkpoint here (Trainer.load reads it; "
             "torch.load too)")
    add("--plot", metavar="PATH",
        help="write a PNG of both training-loss curves (needs matplotlib)")
    add("--threads", type=integer(1, MAX_THREADS),
        help=f"torch.set_num_threads for both runs, 1 to {MAX_THREADS} (default: torch's "
             "choice)")
    add("--timeout", type=real(0, MAX_TIMEOUT_S, lo_open=True), default=300,
        help="under torchrun: seconds a rank waits for the others in any collective before "
             "it fails (default: 300)")
    add("--json", action="store_true", help="print the report as JSON")
    add("--no-progress", action="store_true",
        help="no progress bar (one is shown on a terminal when tqdm is installed)")
    return parser


def check_outputs(args):
    """Raises DataError if --save or --plot could not be written (before any training)."""
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        if path:
            try:
                writable_target(path, option)
            except CheckpointError as exc:
                raise DataError(str(exc)) from None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DataError("--plot needs matplotlib: pip install matplotlib "
                            "(or pip install \"torchext[bench]\")") from None
