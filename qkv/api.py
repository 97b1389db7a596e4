"""Using a run from Python: ``qkv.load(RUN)`` and the verbs as methods of the run it returns.

``load`` returns the run class its family registers (:mod:`qkv.families`): a :class:`TranslationRun`
(``translate``, ``evaluate``, ``evaluate_files``), a :class:`GPTRun` (``generate``, ``evaluate``) or a
:class:`BERTRun` (``embed``, ``evaluate``); each has ``attention`` (every attention map, as data) and
``info``. The CLI calls nothing else.
"""

from __future__ import annotations

from pathlib import Path

from qkv.checkpoint import load_model_tensors, load_weights, read_json
from qkv.errors import QkvError
from qkv.families.base import Run
from qkv.families.lm import BERTRun, GPTRun, LMRun
from qkv.families.translation import TranslationRun
from qkv.recipes import RunConfig

__all__ = ["BERTRun", "GPTRun", "LMRun", "Run", "Seq2SeqRun", "TranslationRun", "load", "read_run_config"]

Seq2SeqRun = TranslationRun  # the name before the family registry


def read_run_config(path: Path) -> RunConfig:
    """The config.json of a run directory, checked; a missing or damaged one is a QkvError naming it."""
    data = read_json(path / "config.json")
    if not isinstance(data, dict) or "model" not in data:
        raise QkvError(f"{path / 'config.json'} is not a qkv run config")
    try:
        return RunConfig.from_dict(data)
    except (KeyError, TypeError) as e:
        raise QkvError(f"{path / 'config.json'} is incomplete ({e}); restore it or train a new run") from None


def load(run: str | Path, *, device: str = "cpu") -> Run:
    """Load a run directory written by ``qkv train`` or ``qkv convert`` onto ``device`` (read-only:
    nothing is changed). Every verb of the run makes its input tensors on that device."""
    path = Path(run)
    if not path.is_dir():
        raise QkvError(f"run directory {path} does not exist; train one with `qkv train --out {path}`")
    cfg = read_run_config(path)
    family = cfg.spec
    tokenizers = family.run.load_tokenizers(path)
    model = family.model(cfg.model)
    load_weights(model, load_model_tensors(path), str(path / "model.safetensors"))
    model.to(device).eval()
    return family.run(path, cfg, model, *tokenizers)
