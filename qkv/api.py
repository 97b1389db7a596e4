"""Using a run from Python: ``qkv.load(RUN)`` and the verbs as methods of the run it returns.

``load`` returns the run class its family registers (:mod:`qkv.families`): a :class:`TranslationRun`
(``translate``, ``evaluate``, ``evaluate_files``), a :class:`GPTRun` (``generate``, ``evaluate``) or a
:class:`BERTRun` (``embed``, ``evaluate``); each has ``attention`` (every attention map, as data) and
``info``. The CLI calls nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from qkv.checkpoint import (
    KEPT,
    atomic_write_json,
    average_weights,
    kept_steps,
    load_model_tensors,
    load_weights,
    new_directory,
)
from qkv.data.store import TokenStore, prepare_store
from qkv.devices import DTYPES, check_quantize, compile_for_inference, resolve_device, resolve_precision
from qkv.errors import QkvError
from qkv.families.base import Run
from qkv.families.lm import BERTRun, GPTRun, LMRun
from qkv.families.translation import TranslationRun
from qkv.linear import set_int8
from qkv.recipes import read_run_config

__all__ = [
    "BERTRun",
    "GPTRun",
    "LMRun",
    "Run",
    "Seq2SeqRun",
    "TranslationRun",
    "average",
    "load",
    "prepare",
    "read_run_config",
]

Seq2SeqRun = TranslationRun  # the name before the family registry


def load(
    run: str | Path, *, device: str = "auto", precision: str = "fp32", compile: bool = False, quantize: str = "none"
) -> Run:
    """Load a run directory written by ``qkv train`` or ``qkv convert`` (read-only: nothing is changed)
    onto ``device`` (auto = a GPU when there is one; see :mod:`qkv.devices`), its weights in
    ``precision`` (fp32, bf16, fp16, or auto = bf16 where the hardware has it). Every verb of the run
    makes its input tensors on that device. ``compile`` runs the model's forward passes under
    ``torch.compile`` (the first calls of each shape compile). ``quantize="int8"`` runs every linear map
    on int8 weights (CPU inference; :func:`qkv.linear.set_int8`); ``"int8-mixed"`` also multiplies each
    call's outlier input channels in float32 (:func:`qkv.linear.int8_linear`)."""
    path = Path(run)
    if not path.is_dir():
        raise QkvError(f"run directory {path} does not exist; train one with `qkv train --out {path}`")
    where = resolve_device(device)
    dtype = DTYPES[resolve_precision(precision, where)]
    check_quantize(quantize, where, dtype, compile)
    cfg = read_run_config(path)
    family = cfg.spec
    tokenizers = family.run.load_tokenizers(path)
    model = family.model(cfg.model)
    load_weights(model, load_model_tensors(path), str(path / "model.safetensors"))
    model.to(device=where, dtype=dtype).eval()
    set_int8(model, quantize != "none", outliers=quantize == "int8-mixed")
    if compile:
        compile_for_inference(model)
    return family.run(path, cfg, model, *tokenizers)


def average(run: str | Path, out: str | Path, *, last: int | None = None, steps: list[int] | None = None) -> Path:
    """Write a new run ``out`` whose weights are the mean of some of ``run``'s kept checkpoints (the paper's
    checkpoint averaging, section 6.1): the ``last`` K, or those of ``steps``. Every verb accepts the new
    run; it has no trainer state (it is a model to use, not a run to continue)."""
    path, out = Path(run), Path(out)
    cfg = read_run_config(path)
    kept = kept_steps(path)
    if not kept:
        raise QkvError(f"{path} keeps no step checkpoints: train it with train.keep_last=K (K >= 2) to average")
    if steps is None:
        last = 5 if last is None else last
        if not 1 <= last <= len(kept):
            raise QkvError(f"--last {last}: {path} keeps {len(kept)} checkpoints (steps {kept}); choose 1..{len(kept)}")
        steps = kept[-last:]
    missing = [s for s in steps if s not in kept]
    if missing or not steps:
        raise QkvError(f"{path} keeps no checkpoint of step {missing[0] if missing else '?'}; it keeps steps {kept}")
    weights = average_weights([path / KEPT / f"step-{s:07d}.safetensors" for s in steps])
    model = cfg.spec.model(cfg.model)
    load_weights(model, weights, f"the average of {path}'s checkpoints")  # they fit the run's model
    with new_directory(out) as tmp:
        for name in cfg.spec.run.TOKENIZER_FILES:
            shutil.copyfile(path / name, tmp / name)
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt", "step": str(max(steps))})
        atomic_write_json(tmp / "config.json", {**cfg.to_dict(), "averaged_from": {"run": str(path), "steps": steps}})
    return out


def prepare(
    out: str | Path,
    *,
    train: list[str | Path],
    valid: list[str | Path],
    test: list[str | Path] | None = None,
    vocab_size: int = 8000,
    joint: bool = True,
    tokenizer: str | Path | None = None,
    fields: tuple[str, str] = ("src", "tgt"),
    log: Any = None,
) -> TokenStore:
    """Tokenize parallel text into a new memory-mapped token store ``out`` (``qkv train --data OUT``
    trains from it): each split is SRC TGT files or one TSV / JSON Lines file, plain or gzip. The BPE
    (``vocab_size`` symbols, ``joint`` or one per side) is learned from ``train``, or the tokenizers of
    the translation run ``tokenizer`` are used."""
    splits = {}
    for name, files in (("train", train), ("valid", valid), ("test", test)):
        if files:
            if len(files) > 2:
                raise QkvError(f"--{name} takes SRC TGT (two files) or one TSV or JSON Lines file, not {len(files)}")
            splits[name] = (str(files[0]), str(files[1]) if len(files) == 2 else None)
    tokenizers = None
    if tokenizer is not None:
        cfg = read_run_config(Path(tokenizer))
        if not cfg.spec.translation:
            raise QkvError(f"--tokenizer {tokenizer} is a {cfg.family} run; give a translation run's directory")
        tokenizers = cfg.spec.run.load_tokenizers(Path(tokenizer))
    if vocab_size < 16:
        raise QkvError(f"--vocab-size {vocab_size}: must be >= 16")
    return prepare_store(out, splits, tokenizers=tokenizers, vocab_size=vocab_size, joint=joint, fields=fields, log=log)
