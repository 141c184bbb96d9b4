"""The training core's small-network step on a team of threads, against stock and one thread.

A network whose products all fit the unblocked tiles, with enough rows and multiply-adds a thread,
runs its whole step on a team (csrc/train/team.h): each member takes a share of the batch rows
(whole chunks of the loss), of dW's rows and of the bias columns, and the members meet at a barrier
a layer. Here such steps are compared with stock PyTorch, must give the same bits as one thread,
and must really run as a team (``_C._team_steps``) on every SIMD build; the shapes take shares cut
short (a last loss chunk of 4 rows), an activation on the output layer (a barrier of its own),
frozen layers (the backward stopping early), no bias, float64, both losses; GELU (whose input
gradient goes through BLAS) and the portable build stay on one thread.
"""

import contextlib

import pytest
import torch
from core_parity_support import (
    assert_matches_stock,
    assert_thread_count_changes_no_bit,
    shape_ids,
    train_both,
)
from cpu_isa_support import SUPPORTED_ISAS, pinned
from torch import nn

import torchext
from torchext import _C

SIMD_ISAS = [isa for isa in SUPPORTED_ISAS if isa != "DEFAULT"]

# (sizes, batch, activation, loss, bias), as in test_cpu_isa; each runs as a team of two.
SHAPES = [
    ([20, 30, 30, 40], 128, "relu", "mse", True),  # the seed network
    ([20, 30, 30, 40], 100, "tanh", "mse", True),  # a last loss chunk of 4 rows
    ([10, 46, 46, 10], 160, "sigmoid", "cross_entropy", True),
    ([8, 64, 4], 2048, "identity", "cross_entropy", False),
    ([33, 70, 17], 96, "relu", "mse", False),  # widths no multiple of the vectors
]
SHAPE_IDS = shape_ids(SHAPES)


def output_tanh(dtype):
    """The seed network with tanh on its output: the top layer's derivative is a pass of its own."""
    return nn.Sequential(
        torchext.nn.Linear(20, 30, dtype=dtype),
        nn.ReLU(),
        torchext.nn.Linear(30, 40, dtype=dtype),
        nn.Tanh(),
    )


def first_layer_frozen(dtype):
    """Three layers, the first frozen: no gradient below the second."""
    model = nn.Sequential(
        torchext.nn.Linear(20, 30, dtype=dtype),
        nn.ReLU(),
        torchext.nn.Linear(30, 30, dtype=dtype),
        nn.ReLU(),
        torchext.nn.Linear(30, 40, dtype=dtype),
    )
    model[0].requires_grad_(False)
    return model


MODELS = {"output-tanh": output_tanh, "first-layer-frozen": first_layer_frozen}
MODEL_SHAPE = ([20, 40], 128, None, "mse", None)  # the data for MODELS


@contextlib.contextmanager
def threads(n):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def team_steps_of(shape, dtype=torch.float32, make_model=None, steps=3):
    """The steps of train_both that ran as a team."""
    before = _C._team_steps()
    train_both(shape, dtype, steps=steps, make_model=make_model)
    return _C._team_steps() - before


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_team_step_matches_stock(isa, dtype, shape):
    with pinned(isa), threads(2):
        assert team_steps_of(shape, dtype) == 3
        assert_matches_stock(shape, dtype)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("name", MODELS)
def test_team_step_of_other_models_matches_stock(isa, name):
    with pinned(isa), threads(2):
        assert team_steps_of(MODEL_SHAPE, make_model=MODELS[name]) == 3
        for dtype in (torch.float32, torch.float64):
            assert_matches_stock(MODEL_SHAPE, dtype, make_model=MODELS[name])


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_team_changes_no_bit(isa, shape):
    assert_thread_count_changes_no_bit(shape, lambda: pinned(isa))


@pytest.mark.parametrize("name", MODELS)
def test_team_of_other_models_changes_no_bit(name):
    assert_thread_count_changes_no_bit(MODEL_SHAPE, make_model=MODELS[name])


@pytest.mark.skipif(not SIMD_ISAS, reason="the team needs the tiles (AVX2 or AVX-512)")
def test_which_steps_run_as_a_team():
    seed = SHAPES[0]
    with threads(1):
        assert team_steps_of(seed) == 0  # one thread: no team
    with threads(2):
        assert team_steps_of(seed) == 3
        assert team_steps_of(([20, 30, 30, 40], 64, "relu", "mse", True)) == 0  # too little work
        assert team_steps_of(([20, 30, 30, 40], 128, "gelu", "mse", True)) == 0  # BLAS inside
        assert team_steps_of(([300, 200, 10], 128, "relu", "mse", True)) == 0  # weights too big
        with pinned("DEFAULT"):
            assert team_steps_of(seed) == 0  # the portable build has no tiles
