"""``python -m torchext``: train one network with torchext.Trainer and with stock PyTorch, compare.

The main job trains the walk-through's network (MLP 20→30→30→40, ReLU, batch 128, SGD lr 1e-2
momentum 0.9) twice from identical initial weights and the same per-epoch shuffling: once with
``torchext.Trainer`` and once with the plain stock loop. It prints steps per second, the
speed-up, the final training and held-out losses of both, and whether the runs agree within the
parity tolerance (exit status 1 if not). The data is a built-in teacher task (see
``torchext.cli_data``) or ``--data PATH``.

    python -m torchext [options]          the main job (options: --help)
    python -m torchext bench [options]    the benchmark matrix against stock torch
    python -m torchext check              build info and Linear parity on the seed shapes

Bad arguments, data files and output paths are one line on stderr and exit status 2 (as is a
diverging loss); Ctrl-C is one line and exit status 130. Under ``torchrun --nproc-per-node N -m
torchext`` both runs are data-parallel and rank 0 prints the report (``cli_distributed``).
The parts: ``cli_args`` (options), ``cli_check``, ``cli_job`` (the two runs), ``cli_report``
(table and plot), ``cli_data``.
"""

import json
import sys

import torch

from .cli_args import PROG, build_parser, check_outputs
from .cli_check import run_check
from .cli_data import DataError
from .cli_distributed import world_from_environment
from .cli_job import run_job
from .cli_report import print_report, save_plot
from .cli_support import check_device, print_error


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    is_check = argv[:1] == ["check"]
    parser = build_parser()
    args = parser.parse_args(argv[1:] if is_check else argv)
    check_device(parser, args.device)
    if is_check or args.check:
        return run_check(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = None
    try:
        world = world_from_environment(args.device, args.timeout)
        check_outputs(args)
        report = run_job(args, world)
        if args.plot and (world is None or world.rank == 0):
            save_plot(args.plot, report)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (DataError, ValueError, OSError, MemoryError) as exc:
        return print_error(PROG, exc)
    except RuntimeError as exc:  # a diverging loss, data the network cannot take, a lost rank
        return print_error(PROG, exc)
    finally:
        if world is not None:
            world.close()
    if world is None or world.rank == 0:  # every rank has the same parity result
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
    return 0 if report["parity"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
