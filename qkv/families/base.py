"""The two halves of a model family above its model: the training hooks the :class:`~qkv.train.Trainer`
calls, and the run class :func:`qkv.load` returns. Each family's are in :mod:`qkv.families.translation`
and :mod:`qkv.families.lm`; :mod:`qkv.families` registers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from qkv.checkpoint import read_json, read_metrics
from qkv.data.bpe import load_tokenizer
from qkv.models.shared import count_parameters
from qkv.objectives import label_smoothed_loss

if TYPE_CHECKING:
    from qkv.families import Family
    from qkv.recipes import RunConfig

__all__ = ["Run", "TrainingHooks", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device the model's weights are on (where every input tensor of inference is made)."""
    return next(model.parameters()).device


@dataclass
class Run:
    """A run directory loaded for use: its config, model and tokenizer(s). Subclasses add the verbs."""

    path: Path
    config: RunConfig
    model: Any

    TOKENIZER_FILES: ClassVar[tuple[str, ...]] = ("tokenizer.json",)

    @classmethod
    def load_tokenizers(cls, path: Path) -> tuple[Any, ...]:
        """The tokenizers saved in a run directory of this family."""
        return tuple(load_tokenizer(Path(path) / name) for name in cls.TOKENIZER_FILES)

    @property
    def device(self) -> torch.device:
        """Where the model is (inputs are made there)."""
        return model_device(self.model)

    def info(self) -> dict[str, Any]:
        """Config, parameter count, last metrics and summary."""
        evaluations = read_metrics(self.path)
        metrics = evaluations[-1] if evaluations else None
        summary = read_json(self.path / "summary.json") if (self.path / "summary.json").exists() else None
        return {
            "run": str(self.path),
            "family": self.config.family,
            "parameters": count_parameters(self.model),
            "config": self.config.to_dict(),
            "last_metrics": metrics,
            "summary": summary,
        }


class TrainingHooks:
    """What differs between families in training: tokenizers (trained from the data, or those of the
    run when resuming), the model (the module saved and the module trained: BERT trains its MLM
    wrapper), a resumable stream of batches, the summed loss of a batch, and held-out evaluation."""

    def __init__(self, family: Family, cfg: RunConfig) -> None:
        self.family = family
        self.cfg = cfg
        self.tokenizers: tuple[Any, ...] = ()
        self.nll: list[float] | None = None

    def model_config(self) -> Any:
        """The model config with vocabulary sizes filled in from the tokenizers."""
        raise NotImplementedError

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        """(the module saved in the run, the module trained)."""
        model = self.family.model(model_cfg)
        return model, model

    def stream(self) -> Any:
        """A resumable stream of training batches."""
        raise NotImplementedError

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (…, V) and targets (…) of a batch; targets equal to :meth:`ignore_index` are not predicted."""
        raise NotImplementedError

    def ignore_index(self) -> int:
        """The target id that marks 'nothing to predict here'."""
        return -100

    def loss_sum(self, model: nn.Module, batch: Any, eps: float) -> torch.Tensor:
        """The batch's label-smoothed loss, summed over its predicted tokens. While ``self.nll`` is a list,
        the batch's plain NLL sum (what perplexity is made of) is appended to it, at the cost of one more
        softmax."""
        logits, target = self.logits_and_target(model, batch)
        loss = label_smoothed_loss(logits, target, eps, self.ignore_index())
        if self.nll is not None:
            with torch.no_grad():
                plain = label_smoothed_loss(logits.detach(), target, 0.0, self.ignore_index()) if eps else loss
                self.nll.append(float(plain))
        return loss

    def evaluate(self, core: nn.Module, split: str) -> dict[str, Any]:
        """Metrics on a held-out split."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> str:
        """A short progress line for ``metrics``."""
        return f"valid loss {metrics['loss']:.4f}"

    def final_split(self) -> str:
        """The split the final summary reports."""
        return "valid"

    def describe_data(self) -> str:
        """What the model trains on, for the first log line."""
        raise NotImplementedError

    def save_tokenizers(self, out: Path) -> None:
        """Write the tokenizer files into the run directory."""
        for tok, name in zip(self.tokenizers, self.family.run.TOKENIZER_FILES, strict=True):
            tok.save(out / name)
