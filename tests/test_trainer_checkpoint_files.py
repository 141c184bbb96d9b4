"""Trainer checkpoints on disk: what save replaces, the file's mode, temporary files, checksums,
and one-sentence errors for every kind of bad file; load_state_dict checking everything first.
"""

import copy
import os
import pickle
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import torchext
from torchext import CheckpointError
from torchext.nn import MLP


def make(seed=0, steps=2):
    torch.manual_seed(seed)
    model = MLP([5, 7, 3], dtype=torch.float64)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=0.1,
                                                         momentum=0.9))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        trainer.step(torch.randn(8, 5, generator=gen, dtype=torch.float64),
                     torch.randn(8, 3, generator=gen, dtype=torch.float64))
    return model, trainer


def snapshot(trainer):
    return copy.deepcopy(trainer.state_dict())


def assert_unchanged(trainer, before):
    now = trainer.state_dict()
    assert now["step"] == before["step"]
    for key, value in now["model"].items():
        assert torch.equal(value, before["model"][key]), key
    assert now["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    for i, s in now["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], before["optimizer"]["state"][i]["momentum_buffer"])


def one_sentence(exc, path):
    text = str(exc)
    assert "\n" not in text and str(path) in text, text
    return text


# ---------------------------------------------------------------------------- what save replaces

def test_save_writes_through_a_symlink(tmp_path):
    _, trainer = make()
    target = tmp_path / "real.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    trainer.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert torch.load(target)["step"] == 2
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(tmp_path / "created.pt")
    trainer.save(dangling)
    assert dangling.is_symlink() and torch.load(tmp_path / "created.pt")["step"] == 2


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_save_refuses_what_is_not_a_regular_file(tmp_path, kind):
    _, trainer = make()
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
        expected = r"a FIFO \(named pipe\)"
    elif kind == "directory":
        path = tmp_path / "folder"
        path.mkdir()
        expected = "a directory"
    else:
        path = "/dev/null"
        expected = "a character device"
    before = os.stat(path)
    with pytest.raises(CheckpointError, match=f"is {expected}; only a regular file is ever "
                                              "replaced") as info:
        trainer.save(path)
    one_sentence(info.value, path)
    after = os.stat(path)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert after.st_ino == before.st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_save_through_a_link_to_a_device_is_refused(tmp_path):
    _, trainer = make()
    link = tmp_path / "null.pt"
    link.symlink_to("/dev/null")
    with pytest.raises(CheckpointError, match="/dev/null .*is a character device"):
        trainer.save(link)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_save_into_a_missing_folder(tmp_path):
    _, trainer = make()
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.save(tmp_path / "no" / "such.pt")


def test_file_mode_is_that_of_torch_save(tmp_path):
    _, trainer = make()
    old = os.umask(0o022)
    try:
        trainer.save(tmp_path / "ours.pt")
        torch.save({}, tmp_path / "torch.pt")
        mode = stat.S_IMODE(os.stat(tmp_path / "ours.pt").st_mode)
        assert mode == stat.S_IMODE(os.stat(tmp_path / "torch.pt").st_mode) == 0o644
        os.chmod(tmp_path / "ours.pt", 0o600)  # replacing a file keeps its mode
        trainer.save(tmp_path / "ours.pt")
        assert stat.S_IMODE(os.stat(tmp_path / "ours.pt").st_mode) == 0o600
    finally:
        os.umask(old)


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    _, trainer = make()
    path = tmp_path / "ckpt.pt"
    trainer.save(path)
    prefix = next(iter(p.name for p in tmp_path.iterdir()), None)
    assert prefix == "ckpt.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import hashlib
    tag = hashlib.sha1(b"ckpt.pt").hexdigest()[:12]
    stale = tmp_path / f".torchext-{tag}-{dead}-123.tmp"
    alive = tmp_path / f".torchext-{tag}-{os.getpid()}-456.tmp"
    other = tmp_path / f".torchext-{'0' * 12}-{dead}-789.tmp"  # another target's
    for p in (stale, alive, other):
        p.write_bytes(b"x" * 1000)
    trainer.save(path)
    assert not stale.exists() and alive.exists() and other.exists()


def test_a_save_killed_with_sigkill_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "ckpt.pt"
    script = textwrap.dedent(f"""
        import os, signal, torch, torchext
        model = torchext.nn.MLP([512, 2048, 512])
        trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=0.1))
        trainer.save({str(path)!r})
        print("saved", flush=True)
        real_save = torch.save
        def save_then_die(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # after writing, before the rename
        torch.save = save_then_die
        trainer.step(torch.randn(4, 512), torch.randn(4, 512))
        trainer.save({str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == -9 and "saved" in result.stdout, result.stderr
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size > 1_000_000
    model = torchext.nn.MLP([512, 2048, 512])
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=0.1))
    trainer.load(path)  # the old file, intact
    assert trainer.steps == 0
    trainer.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# ---------------------------------------------------------------------------- checksums

def test_checkpoint_carries_a_checksum_and_stays_a_plain_torch_load_file(tmp_path):
    model, trainer = make()
    trainer.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt")  # weights_only=True by default
    assert state["checksum"].startswith("sha1:") and len(state["checksum"]) == 45
    assert state["step"] == 2
    _, other = make(seed=5, steps=0)
    other.load(tmp_path / "c.pt")
    assert other.steps == 2


def _flip_payload_byte(path):
    """Flips a bit inside the first tensor record's data (not the zip structure)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[offset + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_payload_bytes_are_detected(tmp_path):
    _, trainer = make()
    path = tmp_path / "c.pt"
    trainer.save(path)
    _flip_payload_byte(path)
    torch.load(path)  # torch itself does not notice
    _, other = make(seed=3)
    before = snapshot(other)
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match its "
                                              "checksum") as info:
        other.load(path)
    one_sentence(info.value, path)
    assert_unchanged(other, before)


def test_a_checkpoint_without_checksum_still_loads(tmp_path):
    _, trainer = make()
    torch.save(trainer.state_dict(), tmp_path / "plain.pt")  # as older versions wrote
    _, other = make(seed=3, steps=0)
    other.load(tmp_path / "plain.pt")
    assert other.steps == 2


# ---------------------------------------------------------------------------- bad files

def _bad_files(tmp_path, good):
    data = good.read_bytes()
    files = {
        "empty": (b"", "is empty"),
        "truncated": (data[:len(data) // 2], "is truncated or damaged"),
        "text": (b"step,loss\n1,0.5\n", "is not a torch.save file"),
        "zip garbage": (data[:200] + b"\0" * (len(data) - 200), "truncated or damaged"),
    }
    for name, (content, message) in files.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(content)
        yield name, path, message
    foreign = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), foreign)
    yield "foreign", foreign, "is not a torchext.Trainer checkpoint .it holds a Tensor"
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    yield "missing keys", partial, "has no 'optimizer', 'step'"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    yield "malicious pickle", evil, "holds objects other than tensors and plain containers, " \
                                    "which a checkpoint never does; refused"
    yield "missing", tmp_path / "nope.pt", "no such file"
    yield "directory", tmp_path, "is a directory"


def test_bad_files_get_one_sentence_and_change_nothing(tmp_path):
    _, trainer = make()
    good = tmp_path / "good.pt"
    trainer.save(good)
    _, other = make(seed=3)
    before = snapshot(other)
    for name, path, message in list(_bad_files(tmp_path, good)):
        with pytest.raises(CheckpointError, match=message) as info:
            other.load(path)
        text = one_sentence(info.value, path)
        assert text.startswith("torchext.Trainer.load: "), (name, text)
    assert_unchanged(other, before)


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path):
    torch.manual_seed(0)
    model = MLP([5, 7, 4], dtype=torch.float64)
    torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1)).save(tmp_path / "o.pt")
    _, trainer = make()
    before = snapshot(trainer)
    with pytest.raises(CheckpointError, match="o.pt does not fit this Trainer: checkpoint does "
                                              "not match the model: 2.weight has shape"):
        trainer.load(tmp_path / "o.pt")
    assert_unchanged(trainer, before)


# ---------------------------------------------------------------------------- load_state_dict

def _bad_states():
    def with_step(value):
        return lambda s: s.update(step=value)

    def model_tensor(value):
        return lambda s: s["model"].update({"0.weight": value})

    def buffer(value):
        return lambda s: s["optimizer"]["state"][0].update(momentum_buffer=value)

    return {
        "step abc": (with_step("abc"), "step must be an integer"),
        "step None": (with_step(None), "step must be an integer"),
        "step tensor": (with_step(torch.tensor(3)), "step must be an integer"),
        "step bool": (with_step(True), "step must be an integer"),
        "step negative": (with_step(-1), "step must be an integer"),
        "step huge": (with_step(2**70), "step must be an integer"),
        "weight on meta": (model_tensor(torch.zeros(7, 5, device="meta")), "without data"),
        "weight shape": (model_tensor(torch.zeros(7, 6)), r"has shape \(7, 6\)"),
        "weight ints": (model_tensor(torch.zeros(7, 5, dtype=torch.long)), "cannot stand for"),
        "weight list": (model_tensor([[0.0] * 5] * 7), "is a list, not a tensor"),
        "buffer shape": (buffer(torch.zeros(2)), r"momentum_buffer of parameter 0 has shape"),
        "buffer on meta": (buffer(torch.zeros(7, 5, device="meta")), "without data"),
        "buffer string": (buffer("zeros"), "is a str, not a tensor"),
        "lr string": (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"),
                      "has lr 'fast', not a number"),
        "groups": (lambda s: s["optimizer"]["param_groups"].append({"params": []}),
                   "has 2 parameter groups"),
        "stray state": (lambda s: s["optimizer"]["state"].update({99: {}}), "entry 99"),
        "no model": (lambda s: s.pop("model"), "missing model"),
    }


@pytest.mark.parametrize("case", list(_bad_states()))
def test_load_state_dict_checks_everything_before_changing_anything(case):
    mutate, message = _bad_states()[case]
    _, source = make(seed=1, steps=3)
    state = copy.deepcopy(source.state_dict())
    mutate(state)
    _, trainer = make(seed=2, steps=1)
    before = snapshot(trainer)
    with pytest.raises(ValueError, match=message):
        trainer.load_state_dict(state)
    assert_unchanged(trainer, before)


def test_load_state_dict_casts_like_stock_loading():
    _, source = make(seed=1, steps=3)
    state = copy.deepcopy(source.state_dict())
    state["model"] = {k: v.float() for k, v in state["model"].items()}  # stock copy_ casts
    _, trainer = make(seed=2, steps=1)
    trainer.load_state_dict(state)
    assert trainer.steps == 3
    assert trainer.model[0].weight.dtype == torch.float64
