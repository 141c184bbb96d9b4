"""torchext.nn.Linear as a drop-in twin of torch.nn.Linear.

Same constructor, same initialisation stream, interchangeable state_dicts,
same repr, and the usual module plumbing (.to, deepcopy, pickle, Sequential,
user modules such as the walk-through's MyNetwork).
"""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import torchext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def twins(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    stock = nn.Linear(*args, **kwargs)
    torch.manual_seed(seed)
    mine = torchext.nn.Linear(*args, **kwargs)
    return stock, mine


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [None, torch.float64, torch.bfloat16])
def test_same_seed_gives_bit_identical_parameters(bias, dtype):
    stock, mine = twins(20, 30, bias=bias, dtype=dtype)
    assert torch.equal(mine.weight, stock.weight)
    assert mine.weight.dtype == stock.weight.dtype
    if bias:
        assert torch.equal(mine.bias, stock.bias)
    else:
        assert mine.bias is None

    # Both consumed the same draws, so the random stream continues identically.
    torch.manual_seed(0)
    nn.Linear(20, 30, bias=bias, dtype=dtype)
    after_stock = torch.rand(3)
    torch.manual_seed(0)
    torchext.nn.Linear(20, 30, bias=bias, dtype=dtype)
    assert torch.equal(torch.rand(3), after_stock)


def test_reset_parameters_matches_stock():
    stock, mine = twins(7, 5)
    torch.manual_seed(3)
    stock.reset_parameters()
    torch.manual_seed(3)
    mine.reset_parameters()
    assert torch.equal(mine.weight, stock.weight) and torch.equal(mine.bias, stock.bias)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_in_features_initialises_like_stock():
    stock, mine = twins(0, 4)
    assert torch.equal(mine.bias, stock.bias)
    x = torch.randn(3, 0)
    torch.testing.assert_close(mine(x), stock(x))


def test_repr_matches_stock():
    for bias in (True, False):
        stock, mine = twins(20, 30, bias=bias)
        assert repr(mine) == repr(stock)
        assert mine.extra_repr() == stock.extra_repr()


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_interchangeable_both_ways(bias):
    stock, mine = twins(20, 30, bias=bias, seed=1)
    other_stock, other_mine = twins(20, 30, bias=bias, seed=2)
    assert list(mine.state_dict()) == list(stock.state_dict())
    other_mine.load_state_dict(stock.state_dict())
    other_stock.load_state_dict(mine.state_dict())
    x = torch.randn(8, 20)
    torch.testing.assert_close(other_mine(x), stock(x), rtol=0, atol=0)
    torch.testing.assert_close(other_stock(x), mine(x), rtol=0, atol=0)


def test_state_dict_through_torch_save_weights_only():
    stock, mine = twins(4, 3)
    buffer = io.BytesIO()
    torch.save(mine.state_dict(), buffer)
    buffer.seek(0)
    stock.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(stock.weight, mine.weight)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward_match_stock(device):
    stock, mine = twins(20, 30)
    stock.to(device)
    mine.to(device)
    for shape in [(128, 20), (20,), (2, 3, 20), (0, 20)]:
        x = torch.randn(*shape, device=device)
        out_stock, out_mine = stock(x), mine(x)
        torch.testing.assert_close(out_mine, out_stock)
        out_stock.sum().backward()
        out_mine.sum().backward()
    torch.testing.assert_close(mine.weight.grad, stock.weight.grad)
    torch.testing.assert_close(mine.bias.grad, stock.bias.grad)


def test_to_dtype_and_deepcopy_and_pickle():
    stock, mine = twins(5, 3)
    mine_double = copy.deepcopy(mine).to(torch.float64)
    assert mine_double.weight.dtype == torch.float64 and mine.weight.dtype == torch.float32
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(mine_double(x), stock.to(torch.float64)(x))
    restored = pickle.loads(pickle.dumps(mine))
    assert isinstance(restored, torchext.nn.Linear)
    assert torch.equal(restored.weight, mine.weight)


def test_inside_sequential_and_my_network():
    class MyNetwork(nn.Module):
        """The walk-through's network: three Linear layers 20→30→30→40."""

        def __init__(self, linear):
            super().__init__()
            self.layer_1 = linear(20, 30)
            self.layer_2 = linear(30, 30)
            self.layer_3 = linear(30, 40)

        def forward(self, x):
            return self.layer_3(self.layer_2(self.layer_1(x)))

    torch.manual_seed(0)
    stock = MyNetwork(nn.Linear)
    torch.manual_seed(0)
    mine = MyNetwork(torchext.nn.Linear)
    x = torch.randn(128, 20)
    torch.testing.assert_close(mine(x), stock(x))
    assert len(list(mine.parameters())) == 6
    seq = nn.Sequential(mine.layer_1, nn.ReLU(), mine.layer_2)
    torch.testing.assert_close(seq(x), torch.relu(stock.layer_1(x)) @ stock.layer_2.weight.t()
                               + stock.layer_2.bias)


def test_bad_input_through_the_module():
    _, mine = twins(20, 30)
    with pytest.raises(RuntimeError, match=r"cannot be multiplied \(128x21 and 20x30\)"):
        mine(torch.randn(128, 21))
    with pytest.raises(RuntimeError, match="weight is Float but input is Double"):
        mine(torch.randn(128, 20, dtype=torch.float64))
