"""The main job under ``torchrun``: ``torchrun --nproc-per-node N -m torchext [options]``.

torchrun starts one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous (``MASTER_ADDR``/``MASTER_PORT``) in the environment; :func:`world_from_environment`
joins that process group (gloo on the CPU, NCCL on CUDA, one GPU per local rank). The job then
trains data-parallel both ways: ``torchext.Trainer(model, ..., process_group=WORLD)`` and the
stock loop, ``DistributedDataParallel`` with ``DistributedSampler(seed=--seed)`` and
``set_epoch``; both see the same shards, so their global epoch losses and parameters must agree.
Every rank computes the same parity result (losses are global means, parameters identical on
all ranks) and exits with the same status; rank 0 prints the report.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["World", "world_from_environment"]


@dataclass
class World:
    """This process's place in the torchrun job."""

    rank: int
    world_size: int
    device: str
    backend: str

    @property
    def group(self):
        return dist.group.WORLD

    def sampler_orders(self, samples, seed):
        """order_of(epoch) for the stock loop: DistributedSampler's indices after set_epoch."""
        sampler = DistributedSampler(range(samples), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=seed)

        def order_of(epoch):
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler), device=self.device)
        return order_of

    def mean(self, value):
        """The mean over the ranks of a float (the stock loop's global epoch loss)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def close(self):
        dist.destroy_process_group()


def world_from_environment(device, timeout_s):
    """The torchrun job this process belongs to (joined now), or None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    if not dist.is_available():
        raise RuntimeError("this torch was built without torch.distributed; run without torchrun")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), device, backend)
