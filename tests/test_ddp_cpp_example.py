"""examples/cpp/train_ddp: torchext::Trainer data-parallel from C++, on 2 processes (gloo).

The example is built with the other C++ programs against the installed torchext (see
test_cpp_interop.py) when gloo's headers are there, and run as two processes meeting through a
FileStore; its epoch losses and the checkpoint rank 0 writes must be those of stock DDP with
DistributedSampler on the same data and initial weights, run here on 2 Python processes.
"""

import subprocess

import pytest
import torch
import torch.distributed as dist
from ddp_support import ranks  # noqa: F401 - the fixture
from test_cpp_interop import cpp_build, pytestmark  # noqa: F401 - the fixture, the skip
from torch.utils.data import DistributedSampler

import torchext

EPOCHS, BATCH = 4, 64


def stock_ddp_reference():
    """The example's training as a stock loop: its data, weights, sampler and optimizer."""
    torch.manual_seed(0)
    x = torch.randn(1024, 20)
    y = x.matmul(torch.randn(20, 40) / 4.5) + 0.1 * torch.randn(1024, 40)
    torch.manual_seed(100 + dist.get_rank())
    mine = torchext.nn.MLP([20, 30, 30, 40], activation="relu")
    stock = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 30),
                                torch.nn.ReLU(), torch.nn.Linear(30, 40))
    stock.load_state_dict(mine.state_dict())
    model = torch.nn.parallel.DistributedDataParallel(stock)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sampler = DistributedSampler(range(1024), seed=0)
    losses = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(order), BATCH):
            index = order[start:start + BATCH]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(index)
        dist.all_reduce(total)
        losses.append(total.item() / 1024)
    return losses, {k: v.clone() for k, v in stock.state_dict().items()}


def test_cpp_example_trains_on_two_processes_like_stock_ddp(cpp_build, ranks,  # noqa: F811
                                                            tmp_path):
    binary = cpp_build / "examples" / "train_ddp"
    if not binary.exists():
        pytest.skip("examples/cpp/train_ddp was not built: gloo's headers were not found "
                    "(apt install libgloo-dev)")
    checkpoint = tmp_path / "ddp.pt"
    store = f"file:{tmp_path / 'store'}"
    processes = [subprocess.Popen([binary, str(rank), "2", store, checkpoint], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for rank in range(2)]
    outputs = []
    try:
        for p in processes:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"train_ddp failed ({p.returncode}):\n{out}\n{err}"
            outputs.append(out)
    finally:
        for p in processes:
            p.kill()
    losses = [[float(line.split()[-1]) for line in out.splitlines() if " epoch " in line]
              for out in outputs]
    assert losses[0] == losses[1] and len(losses[0]) == EPOCHS
    (ref_losses, ref_state), _ = ranks.run(stock_ddp_reference)
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(ref_losses), rtol=1e-5,
                               atol=1e-6)  # printed to 6 decimals
    state = torch.load(checkpoint)
    assert state["step"] == EPOCHS * 512 // BATCH
    for key, value in ref_state.items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6)
