"""The language-model families: GPT (causal, ``generate``) and BERT (masked, ``embed``) — their
training hooks on a text file and their run classes.

Shapes: B texts, T tokens, V vocabulary, d_model width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from qkv.config import replace
from qkv.data import Vocab
from qkv.data.lm import TextSource
from qkv.data.text import read_text
from qkv.decode import generate
from qkv.errors import QkvError
from qkv.families.base import Run, TrainingHooks, model_device
from qkv.models.bert import BERTForMLM, mean_pool
from qkv.objectives import token_loss

if TYPE_CHECKING:
    from qkv.families import Family
    from qkv.recipes import RunConfig
    from qkv.viz.maps import AttentionMaps

__all__ = ["BERTHooks", "BERTRun", "GPTHooks", "GPTRun", "LMHooks", "LMRun"]


class LMHooks(TrainingHooks):
    """Language models on a text file: windows of the model's context, loss per predicted token."""

    mlm = False  # masked-LM batches (BERT) instead of next-token windows (GPT)

    def __init__(
        self,
        family: Family,
        cfg: RunConfig,
        tokenizers: tuple[Any, ...] | None = None,
        log: Any = None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(family, cfg)  # ``workdir``: text is read into memory, nothing is prepared on disk
        tok = tokenizers[0] if tokenizers else None
        self.source = TextSource(cfg.task, tok, mlm=self.mlm, log=log)
        self.tokenizers = (self.source.tokenizer,)
        self._eval: dict[str, list[Any]] = {}

    @property
    def block(self) -> int:
        """Tokens per training example: the model's context."""
        limit = self.cfg.task.max_seq_len
        return min(limit, self.cfg.model.max_len) if limit else self.cfg.model.max_len

    def model_config(self) -> Any:
        tok = self.tokenizers[0]
        return replace(self.cfg.model, "model", vocab_size=len(tok), pad_id=tok.pad_id)

    def stream(self) -> Any:
        tc = self.cfg.train
        return self.source.stream(self.block, tc.batch_size, tc.seed)

    @torch.no_grad()
    def evaluate(self, core: nn.Module, split: str, *, full: bool = False) -> dict[str, Any]:
        """Loss per predicted token and token accuracy on ``task.eval_batches`` fixed random batches of
        ``split``, or with ``full`` on every non-overlapping window of it."""
        key = f"{split}/full" if full else split
        if key not in self._eval:
            self._eval[key] = self.source.eval_batches(split, self.block, self.cfg.train.batch_size, full=full)
        core.eval()
        trained = self.trained_view(core)
        device = model_device(core)
        total, tokens, correct = 0.0, 0, 0
        for batch in self._eval[key]:
            logits, target = self.logits_and_target(trained, batch.to(device))
            total += float(token_loss(logits, target))
            keep = target != -100
            correct += int(((logits.argmax(-1) == target) & keep).sum())
            tokens += int(keep.sum())
        return {"loss": total / tokens, "token_accuracy": correct / tokens, "n": tokens}

    def trained_view(self, core: nn.Module) -> nn.Module:
        """The module whose forward gives logits."""
        return core

    def describe_data(self) -> str:
        return f"text {Path(self.cfg.task.path or '').name}"


class GPTHooks(LMHooks):
    """Causal language modelling."""

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch.idx), batch.targets


class BERTHooks(LMHooks):
    """Masked-language-model pretraining (the module trained is the MLM wrapper of the BERT saved)."""

    mlm = True

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        bert = self.family.model(model_cfg)
        return bert, BERTForMLM(bert)

    def trained_view(self, core: nn.Module) -> nn.Module:
        return BERTForMLM(core)  # type: ignore[arg-type]

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch.ids), batch.labels

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"valid MLM loss {metrics['loss']:.4f}, masked-token accuracy {metrics['token_accuracy']:.4f}"


@dataclass
class LMRun(Run):
    """A language-model run (GPT or BERT): evaluate, attention, info."""

    tokenizer: Any = None

    def evaluate(self, split: str = "valid") -> dict[str, Any]:
        """Loss per predicted token and token accuracy over every token of a held-out split, each scored once."""
        spec = self.config.spec
        hooks = spec.hooks(spec, self.config, (self.tokenizer,))
        return hooks.evaluate(self.model, split, full=True)

    def attention(self, text: str) -> AttentionMaps:
        """Every self-attention map of the model reading ``text``."""
        from qkv.viz.maps import lm_attention_maps

        return lm_attention_maps(self, text)

    def example(self, max_chars: int = 200) -> str | None:
        """The first line of the run's validation text (``task.valid_path``, else the text after the
        training part of ``task.path``), cut at a word to ``max_chars`` and to what the model reads; None
        when there is no text to read."""
        task = self.config.task
        try:
            if task.valid_path is not None:
                text = read_text(task.valid_path)
            elif task.path is not None:
                whole = read_text(task.path)
                text = whole[int(len(whole) * (1 - task.val_fraction)) :].split("\n", 1)[-1]  # from a line start
            else:
                return None
        except (QkvError, OSError):
            return None
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if len(line) > max_chars:
            line = line[:max_chars].rsplit(" ", 1)[0] or line[:max_chars]
        while line and len(self.tokenizer.encode(line)) > self.text_tokens:
            line = line.rsplit(" ", 1)[0] if " " in line else line[:-1]
        return line or None

    @property
    def text_tokens(self) -> int:
        """The most tokens of text the model reads at once."""
        return self.model.cfg.max_len


@dataclass
class GPTRun(LMRun):
    """A decoder-only language model: generate, evaluate, attention, info."""

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's token ids (an empty prompt starts from the end-of-text token where there is one)."""
        ids = self.tokenizer.encode(text)
        if not ids and self.tokenizer.eos_id is not None and len(self.tokenizer) > self.tokenizer.eos_id:
            ids = [self.tokenizer.eos_id]
        if not ids:
            raise QkvError("the prompt is empty; give some text to continue")
        return ids

    def generate(
        self,
        prompts: list[str] | str,
        *,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Continue each prompt; returns the new text of each. ``on_text`` receives the first prompt's
        text piece by piece as it is generated (streaming)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not (math.isfinite(temperature) and temperature >= 0):
            raise QkvError(f"temperature must be a number >= 0 (got {temperature}); 0 means greedy")
        if top_k is not None and top_k < 1:
            raise QkvError(f"top_k must be >= 1 (got {top_k})")
        if top_p is not None and not 0 < top_p <= 1:
            raise QkvError(f"top_p must be in (0, 1] (got {top_p})")
        tok = self.tokenizer
        text_model = isinstance(tok, Vocab)  # qkv's character vocabulary: its special symbols never occur in text
        outs = generate(
            self.model,
            [self.encode_prompt(p) for p in prompts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            eos_id=None if text_model else tok.eos_id,
            pad_id=self.config.model.pad_id,
            suppress=_special_ids(tok) if text_model else None,
            on_step=None if on_text is None else _streamer(tok, on_text),
        )
        return [tok.decode(ids) for ids in outs]


def _streamer(tok: Any, on_text: Callable[[str], None]) -> Callable[[torch.Tensor], None]:
    """An ``on_step`` callback that passes the first row's new text to ``on_text`` once it decodes whole."""
    produced: list[int] = []
    shown = ""

    def step(step_tokens: torch.Tensor) -> None:
        nonlocal shown
        produced.append(int(step_tokens[0]))
        text = tok.decode_all(produced)
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            on_text(text[len(shown) :])
            shown = text

    return step


def _special_ids(tok: Vocab) -> list[int]:
    """The ids of a character vocabulary's special symbols (never part of the text itself)."""
    mask = tok.token_id("<mask>")
    return [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id] + ([mask] if mask is not None else [])


@dataclass
class BERTRun(LMRun):
    """An encoder-only model: embed, evaluate, attention, info."""

    @property
    def max_tokens(self) -> int:
        """Tokens per text, [CLS] and [SEP] included (longer texts are truncated, as sentence-transformers does)."""
        limit = self.config.task.max_seq_len
        return min(limit, self.model.cfg.max_len) if limit else self.model.cfg.max_len

    @property
    def text_tokens(self) -> int:
        """The most tokens of text it reads at once: its ``max_tokens`` less [CLS] and [SEP]."""
        return self.max_tokens - 2

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] text [SEP] ids (B, T), right-padded, and the attention mask (B, T), on the model's device."""
        tok = self.tokenizer
        rows = [[tok.bos_id] + ids[: self.max_tokens - 2] + [tok.eos_id] for ids in tok.encode_batch(texts)]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(rows), T, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, device=self.device)
            mask[i, : len(r)] = True
        return ids, mask

    @torch.no_grad()
    def embed(self, texts: list[str] | str, *, normalize: bool = False, batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings (N, d_model) in float32, on the model's device: mean of the last hidden states
        over the attention mask, L2-normalized when asked."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise QkvError("nothing to embed: give at least one text")
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.cfg.d_model, device=self.device)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            ids, mask = self.encode_texts([texts[j] for j in idx])
            pooled = mean_pool(self.model(ids, mask).float(), mask)  # float32 whatever the weights' precision
            out[idx] = F.normalize(pooled, dim=-1) if normalize else pooled
        return out
