"""Getting Started with torchext, as one script: the code of docs/getting_started.md, in order.

Run it from anywhere:

    python examples/getting_started.py [--out DIR] [--no-figure]

It prints what the guide shows, chapter by chapter, and then draws the guide's figure: the
training loss of every step, for stock PyTorch and for torchext.Trainer on the same data and
shuffling, saved as DIR/training_loss.png (DIR defaults to docs/images). The figure needs
matplotlib; without it the script says so and skips the figure.

tests/test_getting_started.py runs this script and checks that it prints every output the guide
shows, in the guide's order: keep the two in step when editing either.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import torchext

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", type=Path, default=REPO / "docs" / "images",
                    help="folder for the figure (default: docs/images)")
parser.add_argument("--no-figure", action="store_true", help="skip the figure")
args = parser.parse_args()


def chapter(title):
    print(f"\n===== {title} =====\n")


# ---------------------------------------------------------------------------- 1. Autograd
chapter("1. Autograd")

var_1 = torch.tensor(3.0, requires_grad=True)
var_2 = torch.tensor(4.0, requires_grad=True)
product = var_1 * var_2
print(product)

desired = 7.0
difference = product - desired
print(difference)

difference.backward()
print(var_1.grad, var_2.grad)
print(torch.stack([var_1.grad, var_2.grad]))

# Gradients accumulate: a second backward adds to .grad.
(var_1 * var_2 - desired).backward()
print(torch.stack([var_1.grad, var_2.grad]))

# ---------------------------------------------------------------------------- 2. Gradient Descent
chapter("2. Gradient Descent")

var_1 = torch.tensor(3.0, requires_grad=True)
var_2 = torch.tensor(4.0, requires_grad=True)
optimizer = torch.optim.SGD([var_1, var_2], lr=1e-2, momentum=0.9)

optimizer.zero_grad()
loss = (var_1 * var_2 - desired) ** 2
loss.backward()
print(torch.stack([var_1.grad, var_2.grad]))
optimizer.step()
print(f"var_1 = {var_1.item():.4f}, var_2 = {var_2.item():.4f}, "
      f"product = {(var_1 * var_2).item():.4f}")

for step in range(1, 301):
    optimizer.zero_grad()
    loss = (var_1 * var_2 - desired) ** 2
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step:3}: product = {(var_1 * var_2).item():.3f}")


def descend(optimizer_class, steps=300):
    var_1 = torch.tensor(3.0, requires_grad=True)
    var_2 = torch.tensor(4.0, requires_grad=True)
    optimizer = optimizer_class([var_1, var_2], lr=1e-2, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (var_1 * var_2 - desired) ** 2
        loss.backward()
        optimizer.step()
    return torch.stack([var_1, var_2]).detach()


stock_result = descend(torch.optim.SGD)
torchext_result = descend(torchext.optim.SGD)
print(stock_result, torchext_result)
print(torch.allclose(stock_result, torchext_result, rtol=1e-5, atol=0))

# ---------------------------------------------------------------------------- 3. First network
chapter("3. Your First Neural Network")

torch.manual_seed(0)
x = torch.randn(128, 20)
linear = nn.Linear(20, 30)  # 20 input features per sample, 30 output features
output = linear(x)
print(linear.weight.shape, linear.bias.shape)
print(output.shape)

torch.manual_seed(0)
stock_linear = nn.Linear(20, 30)
torch.manual_seed(0)
fast_linear = torchext.nn.Linear(20, 30)
print(fast_linear)
print(torch.equal(stock_linear.weight, fast_linear.weight),
      torch.equal(stock_linear.bias, fast_linear.bias))
print(torch.allclose(stock_linear(x), fast_linear(x), rtol=1e-6, atol=1e-6))

torch.manual_seed(0)
layer_1 = torchext.nn.Linear(20, 30)
layer_2 = torchext.nn.Linear(30, 30)
layer_3 = torchext.nn.Linear(30, 40)

output = layer_3(layer_2(layer_1(x)))
print(output.shape)
(output.sum() - 12).backward()
print(layer_1.weight.grad.shape, layer_3.bias.grad.shape)

optimizer = torchext.optim.SGD(
    [layer_1.weight, layer_1.bias, layer_2.weight, layer_2.bias, layer_3.weight, layer_3.bias],
    lr=1e-2, momentum=0.9,
)
optimizer.step()

# ---------------------------------------------------------------------------- 4. nn.Module
chapter("4. An Honest-to-Goodness Neural Network")


class MyNetwork(nn.Module):
    def __init__(self, layer=torchext.nn.Linear):
        super().__init__()  # creates the registries the assignments below fill
        self.layer_1 = layer(20, 30)
        self.layer_2 = layer(30, 30)
        self.layer_3 = layer(30, 40)

    def forward(self, x):
        return self.layer_3(self.layer_2(self.layer_1(x)))


torch.manual_seed(0)
my_network = MyNetwork()
print(my_network)
print(my_network(x).shape)


class Forgetful(nn.Module):
    def __init__(self):
        self.layer_1 = nn.Linear(20, 30)


try:
    Forgetful()
except AttributeError as error:
    print(error)

for name, parameter in my_network.named_parameters():
    print(f"{name:15} {tuple(parameter.shape)}")
print(sum(p.numel() for p in my_network.parameters()), "numbers to learn")

optimizer = torchext.optim.SGD(my_network.parameters(), lr=1e-2, momentum=0.9)

# ---------------------------------------------------------------------------- 5. Training loop
chapter("5. The Training Loop")

data_generator = torch.Generator().manual_seed(0)
hidden_rule = torch.randn(20, 40, generator=data_generator) / 20**0.5
inputs = torch.randn(1024, 20, generator=data_generator)
targets = inputs @ hidden_rule + 0.1 * torch.randn(1024, 40, generator=data_generator)
print(inputs.shape, targets.shape)


def train_by_hand(model, optimizer, inputs, targets, epochs, batch_size, generator):
    loss_fn = nn.MSELoss()
    epoch_losses = []
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)  # a new shuffle every epoch
        total = 0.0
        for start in range(0, len(inputs), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()                           # 1. zero
            predictions = model(inputs[batch])              # 2. call the model
            loss = loss_fn(predictions, targets[batch])     # 3. compute the loss
            loss.backward()                                 # 4. backward
            optimizer.step()                                # 5. step
            total += loss.item() * len(batch)
        epoch_losses.append(total / len(inputs))            # mean loss over the epoch
    return epoch_losses


torch.manual_seed(0)
stock_network = MyNetwork(layer=nn.Linear)
stock_optimizer = torch.optim.SGD(stock_network.parameters(), lr=1e-2, momentum=0.9)
stock_losses = train_by_hand(stock_network, stock_optimizer, inputs, targets, epochs=10,
                             batch_size=32, generator=torch.Generator().manual_seed(1))

torch.manual_seed(0)
my_network = MyNetwork()
optimizer = torchext.optim.SGD(my_network.parameters(), lr=1e-2, momentum=0.9)
trainer = torchext.Trainer(my_network, optimizer, loss="mse")
print(trainer.backend)

torchext_losses = trainer.fit(inputs, targets, epochs=10, batch_size=32,
                              generator=torch.Generator().manual_seed(1))
print("epoch  stock PyTorch  torchext")
for epoch, (stock_loss, torchext_loss) in enumerate(zip(stock_losses, torchext_losses)):
    print(f"{epoch:5}  {stock_loss:13.6g}  {torchext_loss:8.6g}")

loss = trainer.step(inputs[:32], targets[:32])
print(loss.shape, trainer.steps)
print(f"{trainer.evaluate(inputs, targets):.4f}")

# ---------------------------------------------------------------------------- 6. Best practices
chapter("6. Best Practices")

split = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(2))
train_index, eval_index = split[:819], split[819:]
train_inputs, train_targets = inputs[train_index], targets[train_index]
eval_inputs, eval_targets = inputs[eval_index], targets[eval_index]
print(len(train_inputs), len(eval_inputs))


def evaluate_by_hand(model, inputs, targets):
    model.eval()
    with torch.no_grad():
        loss = nn.functional.mse_loss(model(inputs), targets).item()
    model.train()
    return loss


print(f"{evaluate_by_hand(my_network, eval_inputs, eval_targets):.4f}",
      f"{trainer.evaluate(eval_inputs, eval_targets):.4f}")

torch.manual_seed(0)
my_network = MyNetwork()
optimizer = torchext.optim.SGD(my_network.parameters(), lr=5e-2, momentum=0.9)
trainer = torchext.Trainer(my_network, optimizer, loss="mse")
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
shuffle = torch.Generator().manual_seed(3)

print("epoch  lr      train loss  eval loss")
for epoch in range(30):
    lr = optimizer.param_groups[0]["lr"]
    (train_loss,) = trainer.fit(train_inputs, train_targets, epochs=1, batch_size=32,
                                generator=shuffle)
    eval_loss = trainer.evaluate(eval_inputs, eval_targets)
    scheduler.step()
    if epoch % 5 == 4:
        print(f"{epoch:5}  {lr:<6}  {train_loss:10.4f}  {eval_loss:9.4f}")

torch.manual_seed(0)
unstable = MyNetwork()
too_fast = torchext.Trainer(unstable, torchext.optim.SGD(unstable.parameters(), lr=10.0))
try:
    too_fast.fit(train_inputs, train_targets, epochs=1, batch_size=32,
                 generator=torch.Generator().manual_seed(3))
except RuntimeError as error:
    print(error)

# ---------------------------------------------------------------------------- 7. Saving
chapter("7. Saving and Restoring Models")

checkpoint_dir = tempfile.mkdtemp()
weights_path = os.path.join(checkpoint_dir, "my_network.pt")
torch.save(my_network.state_dict(), weights_path)

restored = MyNetwork()
restored.load_state_dict(torch.load(weights_path))
print(torch.equal(restored(eval_inputs), my_network(eval_inputs)))

stock_restored = MyNetwork(layer=nn.Linear)
stock_restored.load_state_dict(torch.load(weights_path))
print(torch.allclose(stock_restored(eval_inputs), my_network(eval_inputs), rtol=1e-6, atol=1e-6))

checkpoint_path = os.path.join(checkpoint_dir, "checkpoint.pt")
trainer.save(checkpoint_path)

checkpoint = torch.load(checkpoint_path)
print(sorted(checkpoint))
print(checkpoint["step"], list(checkpoint["optimizer"]["state"][0]))

torch.save(shuffle.get_state(), os.path.join(checkpoint_dir, "shuffle.pt"))
straight_on = trainer.fit(train_inputs, train_targets, epochs=5, batch_size=32,
                          generator=shuffle)

torch.manual_seed(1234)  # a different start, overwritten by the checkpoint
resumed_network = MyNetwork()
resumed_optimizer = torchext.optim.SGD(resumed_network.parameters(), lr=1.0)
resumed_trainer = torchext.Trainer(resumed_network, resumed_optimizer, loss="mse")
resumed_trainer.load(checkpoint_path)
resumed_shuffle = torch.Generator()
resumed_shuffle.set_state(torch.load(os.path.join(checkpoint_dir, "shuffle.pt")))
resumed = resumed_trainer.fit(train_inputs, train_targets, epochs=5, batch_size=32,
                              generator=resumed_shuffle)

print(resumed_optimizer.param_groups[0]["lr"], resumed_trainer.steps)
print(resumed == straight_on)
print(all(torch.equal(a, b)
          for a, b in zip(resumed_network.parameters(), my_network.parameters())))

# ---------------------------------------------------------------------------- 8. The GPU
chapter("8. The GPU")

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

torch.manual_seed(0)
gpu_network = MyNetwork().to(device)  # moves every registered parameter
gpu_optimizer = torchext.optim.SGD(gpu_network.parameters(), lr=1e-2, momentum=0.9)
gpu_trainer = torchext.Trainer(gpu_network, gpu_optimizer, loss="mse")
gpu_inputs, gpu_targets = train_inputs.to(device), train_targets.to(device)
gpu_losses = gpu_trainer.fit(gpu_inputs, gpu_targets, epochs=3, batch_size=32,
                             generator=torch.Generator().manual_seed(3))
print(gpu_trainer.backend == device.type, len(gpu_losses))

if torch.cuda.is_available():
    batch_inputs, batch_targets = gpu_inputs[:128], gpu_targets[:128]
    for _ in range(20):  # warm up: the first steps pay one-time setup costs
        gpu_trainer.step(batch_inputs, batch_targets)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(1000):
        gpu_trainer.step(batch_inputs, batch_targets)
    torch.cuda.synchronize()
    microseconds_per_step = (time.perf_counter() - start) / 1000 * 1e6
    print(f"torchext.Trainer on {torch.cuda.get_device_name()}: "
          f"{microseconds_per_step:.1f} us per step of the seed network (batch 128)")
else:
    print("(no CUDA device: the timing example of chapter 8 is skipped)")

# Mixed precision: bfloat16 products and activations, float32 loss and weights.
torch.manual_seed(0)
mixed_network = MyNetwork().to(device)
mixed_trainer = torchext.Trainer(
    mixed_network, torchext.optim.SGD(mixed_network.parameters(), lr=1e-2, momentum=0.9),
    loss="mse", precision="bf16-mixed")
mixed_losses = mixed_trainer.fit(gpu_inputs, gpu_targets, epochs=3, batch_size=32,
                                 generator=torch.Generator().manual_seed(3))
print(mixed_trainer.precision, next(mixed_network.parameters()).dtype, len(mixed_losses))

# ---------------------------------------------------------------------------- the figure
# The loss of every step of chapter 5's training, over 20 epochs, for the stock loop and for
# torchext.Trainer.step driven through the same minibatches in the same order.
chapter("Figure: training loss per step")


def per_step_losses(step_fn, epochs=20, batch_size=32):
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            batch = order[start:start + batch_size]
            losses.append(float(step_fn(inputs[batch], targets[batch])))
    return losses


torch.manual_seed(0)
figure_stock = MyNetwork(layer=nn.Linear)
figure_stock_optimizer = torch.optim.SGD(figure_stock.parameters(), lr=1e-2, momentum=0.9)


def stock_step(batch_inputs, batch_targets):
    figure_stock_optimizer.zero_grad()
    loss = nn.functional.mse_loss(figure_stock(batch_inputs), batch_targets)
    loss.backward()
    figure_stock_optimizer.step()
    return loss.item()


torch.manual_seed(0)
figure_network = MyNetwork()
figure_trainer = torchext.Trainer(
    figure_network, torchext.optim.SGD(figure_network.parameters(), lr=1e-2, momentum=0.9),
    loss="mse")
curve_stock = per_step_losses(stock_step)
curve_torchext = per_step_losses(figure_trainer.step)
worst = max(abs(a - b) / a for a, b in zip(curve_stock, curve_torchext))
print(f"{len(curve_stock)} steps; largest relative difference between the two curves: "
      f"{worst:.1e}")

if args.no_figure:
    print("(--no-figure: the figure is not drawn)")
else:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: the figure is skipped (pip install matplotlib)")
    else:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = range(1, len(curve_stock) + 1)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        ax.plot(steps, curve_stock, color="tab:blue", linewidth=3.5, alpha=0.45,
                label="stock PyTorch (nn.Linear, torch.optim.SGD, loop by hand)")
        ax.plot(steps, curve_torchext, color="tab:red", linewidth=1.0, linestyle="--",
                label="torchext (Trainer.step, torchext.optim.SGD)")
        ax.axhline(0.01, color="gray", linewidth=0.8, linestyle=":")
        ax.text(len(curve_stock), 0.011, "noise floor 0.01", ha="right", va="bottom",
                color="gray", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("training step (minibatch of 32; 32 steps per epoch)")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title("MyNetwork 20→30→30→40, SGD lr 0.01, momentum 0.9: same data, same order")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.25)
        fig.tight_layout()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "training_loss.png"
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        print(f"figure written to {path}")
