"""The Trainer's data-parallel side: which process group, which module, and the collective calls.

``Trainer(DistributedDataParallel(module), ...)`` trains ``module`` on the DDP's process group;
``Trainer(module, ..., process_group=group)`` does the same without DDP. Either way the C++ core
(see ``csrc/torchext/trainer_core.h``) all-reduces the gradients of each step itself, or, for a
model it does not run, the eager loop runs the stock DDP step (the given DDP, or one the Trainer
wraps around ``module``). :class:`DataParallel` holds the group and the calls the Trainer makes
on it for both paths: DistributedSampler's shards, global means of losses, and the agreement of
all ranks at the start of ``save`` and ``load`` (``torchext._C.data_parallel``, so every failure
names the collective that failed and no rank goes on alone).
"""

import math

import torch
from torch import nn

from . import _C

__all__ = ["DataParallel", "resolve"]

_DDP = nn.parallel.DistributedDataParallel


def _is_process_group(group):
    return isinstance(group, torch.distributed.ProcessGroup)


def resolve(model, process_group):
    """(module to train, DataParallel or None, whether the core may run it) for the arguments."""
    if process_group is not None and not (torch.distributed.is_available()
                                          and _is_process_group(process_group)):
        raise TypeError("process_group must be a torch.distributed.ProcessGroup (for example "
                        f"torch.distributed.group.WORLD), got {type(process_group).__name__}")
    if not isinstance(model, _DDP):
        if process_group is None:
            return model, None, True
        return model, DataParallel(process_group, model), True
    if process_group is not None and process_group is not model.process_group:
        raise ValueError("the model is a DistributedDataParallel on another process group than "
                         "process_group; pass one of them (the DDP's group is used by default)")
    # What the core does not do: DDP's communication hooks (gradient compression, its
    # mixed precision) and parameters it was told to leave unsynchronised. Those models run
    # the stock DDP step.
    plain = not (getattr(model, "_comm_hooks", None) or getattr(model, "mixed_precision", None)
                 or getattr(model, "parameters_to_ignore", None))
    return model.module, DataParallel(model.process_group, model.module, ddp=model), plain


class DataParallel:
    """One replica per rank of ``group``: the calls the Trainer makes on it."""

    def __init__(self, group, module, ddp=None):
        self.group = group
        self.rank = group.rank()
        self.world_size = group.size()
        self.module = module
        self.ddp = ddp  # the model as given, or the one the eager loop wraps (see eager_model)
        self.owns_ddp = False

    @property
    def device(self):
        first = next(iter(self.module.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    def replicate_buffers(self, who):
        """Rank 0's buffers on every rank, after comparing them (the core does the parameters)."""
        named = list(self.module.named_buffers())
        if named:
            _C.data_parallel.replicate_from_rank0(self.group, [b for _, b in named],
                                                  [n for n, _ in named], [], who)

    def eager_model(self):
        """The module the eager loop runs: the given DDP, else a DDP the Trainer wraps once.

        DDP's constructor replicates rank 0's parameters and buffers (after comparing their
        shapes) and its forward/backward all-reduces the gradients: the stock DDP step.
        """
        if self.ddp is None:
            named = [*self.module.named_parameters(), *self.module.named_buffers()]
            _C.data_parallel.replicate_from_rank0(self.group, [t for _, t in named],
                                                  [n for n, _ in named], [], "torchext.Trainer")
            self.ddp = _DDP(self.module, process_group=self.group)
            self.owns_ddp = True
        return self.ddp

    def check_synchronising(self, who):
        if self.ddp is not None and not self.owns_ddp and not self.ddp.require_backward_grad_sync:
            raise RuntimeError(f"{who}: called inside DistributedDataParallel.no_sync(); the "
                               "Trainer all-reduces every step's gradients (it does not "
                               "accumulate them over steps), so it does not run there")

    # ------------------------------------------------------------------ fit and evaluate

    def samples_per_rank(self, samples):
        return math.ceil(samples / self.world_size)

    def shard(self, samples, shuffle, seed, epoch, device):
        """This rank's sample indices of the epoch, as DistributedSampler gives them."""
        return _C.data_parallel.shard_indices(samples, self.rank, self.world_size, shuffle, seed,
                                              epoch).to(device)

    def part(self, samples):
        """This rank's contiguous part (start, stop) of ``samples`` for evaluate."""
        def start(rank):
            return samples // self.world_size * rank + min(rank, samples % self.world_size)
        return start(self.rank), start(self.rank + 1)

    def all_reduce_sum(self, values, who, what):
        """The sum over the ranks of ``values`` (floats), computed in float64."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        _C.data_parallel.all_reduce_sum_(self.group, t, who, what)
        return t.tolist()

    def agree(self, checks_passed, settings, who):
        _C.data_parallel.agree(self.group, self.device, checks_passed, settings, who)
