"""How often a GPT run's int8 weights pick the same next token as its fp32 weights.

Reads the validation part of the run's own text (the last ``task.val_fraction``, as training held it
out; or ``--text FILE`` read whole), cuts it into windows of the model's context, and compares, at each of
the first ``--positions`` positions, the most likely next token of ``qkv.load(RUN)`` and of
``qkv.load(RUN, quantize="int8")`` (teacher-forced: both read the same true text). Prints the agreement,
the loss of each on those positions, and the largest change of a next-token log-probability.

    python benchmarks/int8_agreement.py --run RUN [--text FILE] [--positions 1000]

A GPT-2 converted from Hugging Face (``qkv convert --from-hf gpt2``) works the same way with ``--text``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import qkv
from qkv.data.text import read_text
from qkv.env import summary_line


@torch.no_grad()
def main() -> None:
    """Compare the two precisions' next tokens."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a GPT run (trained, or converted from Hugging Face)")
    p.add_argument("--text", help="text to read whole (default: the validation part of the run's own text)")
    p.add_argument("--positions", type=int, default=1000)
    a = p.parse_args()
    if a.positions < 1:
        p.error("--positions must be >= 1")
    fp32, int8 = qkv.load(a.run), qkv.load(a.run, quantize="int8")
    task = fp32.config.task
    if a.text is not None:
        text = read_text(a.text)
    else:
        whole = read_text(task.valid_path or task.path)
        text = whole if task.valid_path else whole[int(len(whole) * (1 - task.val_fraction)) :]
    ids = torch.tensor(fp32.tokenizer.encode(text))
    block = fp32.model.cfg.max_len
    n = min(a.positions, (len(ids) - 1) // block * block)
    windows = ids[: -(-n // block) * block + 1]
    x = windows[:-1].view(-1, block)  # (W, block)
    y = windows[1:].view(-1, block)
    lp32 = F.log_softmax(fp32.model(x).float(), -1).flatten(0, 1)[:n]  # (n, V)
    lp8 = F.log_softmax(int8.model(x).float(), -1).flatten(0, 1)[:n]
    target = y.flatten()[:n]
    agree = int((lp32.argmax(-1) == lp8.argmax(-1)).sum())
    loss32 = float(F.nll_loss(lp32, target))
    loss8 = float(F.nll_loss(lp8, target))
    print(summary_line())
    print(
        f"{a.run}: {n} positions; int8 picks fp32's next token at {agree}/{n} ({agree / n:.1%}); "
        f"loss fp32 {loss32:.5f}, int8 {loss8:.5f} ({loss8 - loss32:+.5f}); "
        f"largest |change| of a next-token log-probability {float((lp32 - lp8).abs().max()):.4f}"
    )


if __name__ == "__main__":
    main()
