"""docs/getting_started.md is executable: every code block runs and every shown output is checked.

The guide's ```python blocks run in order, in one shared namespace, once per pytest run (the
``guide_run`` fixture). A ```text block right after a python block (blank lines between are
allowed) is that block's expected output; a python block without one must print nothing, so the
guide shows everything its code prints. Outputs are compared line by line: text and integers
exactly, and so are decimals shown with fewer than 4 significant digits; a decimal shown with 4 or
more may differ by the project's float32 parity tolerance (relative 1e-5, as between torchext and
stock PyTorch) plus one unit in its last printed digit (both printouts are rounded). Another CPU
or BLAS legitimately moves float32 results after hundreds of steps by that much; anything larger is
drift.

Markers, an HTML comment on the line before a fence:
  ``<!-- requires: cuda -->`` before a python block: run only when CUDA is available.

There is one test per chapter (``## `` heading), so a failure names the chapter, plus tests of the
guide's structure and links, and a test that examples/getting_started.py runs and prints the same
outputs as the guide.
"""

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from torchext.cli_job import PARITY_RTOL

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "getting_started.md"
EXAMPLE = ROOT / "examples" / "getting_started.py"

# Link targets written and owned elsewhere in the repository: checked only once they exist.
LINKS_WRITTEN_ELSEWHERE = {"../examples/cpp/README.md"}

REQUIRES_CUDA = "<!-- requires: cuda -->"


# ---------------------------------------------------------------------------- parsing


@dataclass
class Block:
    chapter: str
    line: int  # 1-based line of the first code line in the guide
    code: str
    expected: str | None = None  # the text block after it, or None
    requires_cuda: bool = False
    # filled in by the run
    output: str = ""
    error: str | None = None
    ran: bool = False


@dataclass
class Guide:
    blocks: list[Block] = field(default_factory=list)
    chapters: list[str] = field(default_factory=list)
    text_blocks_without_code: list[int] = field(default_factory=list)


def parse_guide(text: str) -> Guide:
    """Splits the guide into python blocks, each with its chapter and expected output."""
    guide = Guide()
    lines = text.splitlines()
    chapter = "(preamble)"
    last_python: Block | None = None  # the python block a text block may belong to
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            chapter = line[3:].strip()
            guide.chapters.append(chapter)
        stripped = line.strip()
        if stripped.startswith("```") and stripped != "```":
            language = stripped[3:].strip()
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            body = "\n".join(lines[start:end]) + "\n"
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1)
                             if lines[j].strip()), "")
            if language == "python":
                last_python = Block(chapter, start + 1, body,
                                    requires_cuda=previous == REQUIRES_CUDA)
                guide.blocks.append(last_python)
            elif language == "text":
                if last_python is None or last_python.expected is not None:
                    guide.text_blocks_without_code.append(i + 1)
                else:
                    last_python.expected = body
            i = end + 1
            # Only a text fence that follows at once (blank lines aside) belongs to the block.
            while i < len(lines) and not lines[i].strip():
                i += 1
            if i < len(lines) and lines[i].strip() != "```text":
                last_python = None
            continue
        if stripped:
            last_python = None
        i += 1
    return guide


GUIDE_TEXT = GUIDE.read_text(encoding="utf-8")
PARSED = parse_guide(GUIDE_TEXT)


# ---------------------------------------------------------------------------- running


def run_blocks(blocks: list[Block], cuda: bool) -> None:
    """Runs the blocks in order in one namespace; stops at the first error."""
    namespace = {"__name__": "getting_started_guide"}
    for block in blocks:
        if block.requires_cuda and not cuda:
            continue
        # Leading newlines make tracebacks point at the guide's own line numbers.
        code = compile("\n" * (block.line - 1) + block.code, str(GUIDE), "exec")
        buffer = io.StringIO()
        block.ran = True
        try:
            with contextlib.redirect_stdout(buffer):
                exec(code, namespace)  # noqa: S102 - running the guide is the point
        except Exception:  # noqa: BLE001 - reported by the chapter's test
            block.error = traceback.format_exc()
        block.output = buffer.getvalue()
        if block.error is not None:
            return


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory):
    """The guide, run once; its temporary files go to pytest's folder, and the global RNG
    state is restored afterwards so that the guide's seeding does not leak into other tests."""
    guide = parse_guide(GUIDE_TEXT)
    cwd, rng, tempdir = os.getcwd(), torch.random.get_rng_state(), tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("guide"))
    try:
        run_blocks(guide.blocks, torch.cuda.is_available())
    finally:
        os.chdir(cwd)
        torch.random.set_rng_state(rng)
        tempfile.tempdir = tempdir
    return guide


# ---------------------------------------------------------------------------- comparing

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _significant_digits(token: str) -> int:
    mantissa = re.split(r"[eE]", token.lstrip("+-"))[0]
    return len(mantissa.replace(".", "").lstrip("0"))


def _last_digit_unit(token: str) -> float:
    mantissa, _, exponent = token.lstrip("+-").lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


# Printed float32 results: the parity tolerance, relative.
NUMBER_RTOL = PARITY_RTOL[torch.float32]


def _numbers_close(shown: str, got: str) -> bool:
    if shown == got:
        return True
    is_integer = not re.search(r"[.eE]", shown)
    if is_integer or _significant_digits(shown) < 4:
        return False
    allowed = NUMBER_RTOL * abs(float(shown)) + _last_digit_unit(shown)
    return abs(float(shown) - float(got)) <= 1.0001 * allowed


def lines_match(shown: str, got: str) -> bool:
    """Equal, or equal up to the parity tolerance in numbers shown to 4+ digits."""
    if shown == got:
        return True
    shown_numbers, got_numbers = _NUMBER.findall(shown), _NUMBER.findall(got)
    if _NUMBER.split(shown) != _NUMBER.split(got) or len(shown_numbers) != len(got_numbers):
        return False
    return all(_numbers_close(a, b) for a, b in zip(shown_numbers, got_numbers, strict=True))


def output_mismatch(expected: str | None, got: str) -> str | None:
    """None when ``got`` matches the guide, else a description of the difference."""
    shown_lines = [line.rstrip() for line in (expected or "").rstrip().splitlines()]
    got_lines = [line.rstrip() for line in got.rstrip().splitlines()]
    if len(shown_lines) == len(got_lines) and all(
            lines_match(a, b) for a, b in zip(shown_lines, got_lines, strict=True)):
        return None
    if expected is None:
        return "the block prints output but the guide shows none:\n" + got
    return ("the guide shows:\n" + "\n".join(shown_lines) + "\n\nthe block printed:\n"
            + "\n".join(got_lines))


def test_lines_match_rules():
    assert lines_match("tensor([4., 3.])", "tensor([4., 3.])")
    assert not lines_match("tensor([4., 3.])", "tensor([4., 2.])")
    # 1.06155: tolerance 1e-5 * 1.06155 + 1e-5 (one unit in the last digit) = 2.06e-5.
    assert lines_match("    0        1.06155   1.06155", "    0        1.06156   1.06155")
    assert lines_match("    0        1.06155", "    0        1.06157")
    assert not lines_match("    0        1.06155", "    0        1.06158")
    assert lines_match("loss 123.456", "loss 123.457")  # 1.2e-3 + 1e-3 allowed
    assert not lines_match("loss 123.456", "loss 123.459")
    assert lines_match("-2.71828e+03", "-2.71831e+03")  # 2.7e-2 + 1e-2 allowed
    assert not lines_match("-2.71828e+03", "-2.71833e+03")
    assert not lines_match("-2.71828e+03", "-2.71828e+03 more")
    assert not lines_match("0.02  0.1853", "0.02  0.1855")
    assert not lines_match("step 2", "step 3")  # integers: exact
    assert not lines_match("4096 samples", "4097 samples")
    assert not lines_match("9.62e-05", "9.63e-05")  # 3 significant digits: exact
    assert lines_match("9.621e-05", "9.622e-05")
    assert not lines_match("True", "False")


SAMPLE = """# Title

## 1. First

```python
x = 2
print(x * 3)
```

```text
6
```

Prose.

```python
y = x + 1
```

<!-- requires: cuda -->
```python
print("on the GPU")
```

```text
on the GPU
```

## 2. Second

```python
print(y)
```

```bash
echo not python
```
"""


def test_parser_and_runner_on_a_sample():
    guide = parse_guide(SAMPLE)
    assert guide.chapters == ["1. First", "2. Second"]
    assert [(b.chapter, b.line, b.expected, b.requires_cuda) for b in guide.blocks] == [
        ("1. First", 6, "6\n", False), ("1. First", 17, None, False),
        ("1. First", 22, "on the GPU\n", True), ("2. Second", 32, None, False)]
    run_blocks(guide.blocks, cuda=False)
    first, second, gpu, last = guide.blocks
    assert output_mismatch(first.expected, first.output) is None
    assert output_mismatch(second.expected, second.output) is None
    assert not gpu.ran
    # A block that prints what the guide does not show is caught.
    assert "prints output but the guide shows none" in output_mismatch(last.expected, last.output)
    # A failing block stops the run and keeps its traceback, with the guide's line number.
    broken = parse_guide("## A\n\n```python\nundefined_name\n```\n\n```python\nprint(1)\n```\n")
    run_blocks(broken.blocks, cuda=False)
    assert "NameError" in broken.blocks[0].error and "line 4" in broken.blocks[0].error
    assert not broken.blocks[1].ran


# ---------------------------------------------------------------------------- tests


def test_guide_structure():
    chapters = [c.split(". ", 1)[-1] for c in PARSED.chapters]
    for title in ("Autograd", "Gradient Descent", "Your First Neural Network",
                  "An Honest-to-Goodness Neural Network", "The Training Loop", "Best Practices",
                  "Saving and Restoring Models", "The GPU", "Why Is torchext Faster Here?"):
        assert title in chapters, f"chapter {title!r} is missing"
    assert not PARSED.text_blocks_without_code, (
        f"text blocks at lines {PARSED.text_blocks_without_code} follow no python block")
    assert "TODO" not in GUIDE_TEXT
    assert any(b.requires_cuda for b in PARSED.blocks)


def test_guide_links_and_images_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", GUIDE_TEXT)
    assert "images/training_loss.png" in targets
    for target in targets:
        if re.match(r"[a-z]+://", target):
            continue
        path = (GUIDE.parent / target).resolve()
        if target in LINKS_WRITTEN_ELSEWHERE and not path.exists():
            continue
        assert path.exists(), f"the guide links to {target}, which does not exist"


def test_guide_anchors_exist():
    anchors = {re.sub(r"[^\w\- ]", "", c.lower()).replace(" ", "-") for c in PARSED.chapters}
    for anchor in re.findall(r"\]\(#([^)]+)\)", GUIDE_TEXT):
        assert anchor in anchors, f"the guide links to #{anchor}, which is no heading"


@pytest.mark.parametrize("chapter", sorted({b.chapter for b in PARSED.blocks},
                                           key=[b.chapter for b in PARSED.blocks].index))
def test_chapter(guide_run, chapter):
    blocks = [b for b in guide_run.blocks if b.chapter == chapter]
    earlier = [b for b in guide_run.blocks[:guide_run.blocks.index(blocks[0])] if b.error]
    if earlier:
        pytest.fail(f"an earlier chapter failed ({earlier[0].chapter!r}, line {earlier[0].line})")
    checked = 0
    for block in blocks:
        if not block.ran:
            continue
        if block.error is not None:
            pytest.fail(f"the block at line {block.line} raised:\n{block.error}")
        mismatch = output_mismatch(block.expected, block.output)
        assert mismatch is None, f"output of the block at line {block.line}: {mismatch}"
        checked += 1
    if checked == 0:
        pytest.skip("every block of this chapter needs CUDA")


def test_example_script_runs_and_prints_the_guide(guide_run, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path)], check=False,
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    # Each output the guide printed (in this run, on this machine) appears in the script's
    # output, in the same order: the script is the guide's code.
    position = 0
    for block in guide_run.blocks:
        if not block.ran or not block.output.strip():
            continue
        found = result.stdout.find(block.output, position)
        assert found >= 0, (f"the script does not print the output of the guide's block at line "
                            f"{block.line}:\n{block.output}")
        position = found + len(block.output)
    figure = tmp_path / "training_loss.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in result.stdout
    else:
        assert figure.exists() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
