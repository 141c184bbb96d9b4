"""torchext.optim.SGD under DistributedDataParallel (gloo, one process) matches torch.optim.SGD."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import torchext

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_training_matches_stock(process_group):
    torch.manual_seed(0)
    model = torchext.nn.MLP([8, 16, 4], dtype=torch.float64)
    ref = copy.deepcopy(model)
    ddp, ddp_ref = nn.parallel.DistributedDataParallel(model), \
        nn.parallel.DistributedDataParallel(ref)
    opt = torchext.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref_opt = torch.optim.SGD(ddp_ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(12, 8, generator=gen, dtype=torch.float64)
        y = torch.randn(12, 4, generator=gen, dtype=torch.float64)
        for net, optimizer in ((ddp, opt), (ddp_ref, ref_opt)):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
