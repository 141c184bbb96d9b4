"""Whole training steps and a Trainer.fit epoch: torchext against stock torch, same process.

A thin wrapper over ``python -m torchext bench --kinds step,fit`` (the code lives in
torchext/bench.py so that it is installed with the package); every option of that command
works here too, e.g. ``--device cuda``, ``--quick``, ``--json``, ``--markdown``.

    python benchmarks/bench_trainer.py [--device cpu|cuda] [--quick] [--json]
"""

import sys

from torchext.bench import main

if __name__ == "__main__":
    sys.exit(main(["--kinds", "step,fit", *sys.argv[1:]]))
