"""Using a trained run from Python: ``qkv.load(RUN)`` and the methods the CLI verbs call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qkv.checkpoint import load_model_tensors, load_weights, read_json
from qkv.data import BPETokenizer, Vocab, build_source, encode_source, read_lines
from qkv.decode import beam_search, greedy
from qkv.errors import QkvError
from qkv.models import Transformer, build_transformer, count_parameters
from qkv.train import RunConfig, bleu_scores, evaluate, load_run_tokenizers

__all__ = ["Seq2SeqRun", "load"]

if TYPE_CHECKING:
    from qkv.viz.maps import AttentionMaps


@dataclass
class Seq2SeqRun:
    """A trained encoder–decoder run: its model, tokenizers and config, with translate/evaluate/info."""

    path: Path
    config: RunConfig
    model: Transformer
    src_tokenizer: Vocab | BPETokenizer
    tgt_tokenizer: Vocab | BPETokenizer

    def encode_source(self, texts: list[str]) -> torch.Tensor:
        """Source texts -> (B, S) ids with <eos>; a text too long for the model is a QkvError."""
        limit = self.config.model.max_len - 1
        for i, text in enumerate(texts):
            n = len(self.src_tokenizer.encode(text)) + 1
            if n > self.config.model.max_len:
                raise QkvError(
                    f"input {i + 1} has {n - 1} tokens; this model reads at most {limit}: shorten it or split it"
                )
        return encode_source(texts, self.src_tokenizer)

    @torch.no_grad()
    def translate(
        self,
        texts: list[str] | str,
        *,
        beam: int = 1,
        alpha: float = 0.6,
        max_len: int | None = None,
        batch_size: int = 64,
    ) -> list[str]:
        """Translate texts (greedy when ``beam`` is 1, else beam search); returns one string per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out: list[str] = [""] * len(texts)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            src = self.encode_source([texts[j] for j in idx])
            ids = dict(bos_id=self.tgt_tokenizer.bos_id, eos_id=self.tgt_tokenizer.eos_id, max_len=max_len)
            if beam == 1:
                hyps = greedy(self.model, src, **ids)
            else:
                hyps = [h[0] for h in beam_search(self.model, src, beam=beam, alpha=alpha, **ids)]
            for j, h in zip(idx, hyps, strict=True):
                out[j] = self.tgt_tokenizer.decode(h.tokens)
        return out

    def evaluate(self, split: str = "test", *, beam: int = 1) -> dict[str, Any]:
        """Loss, token accuracy, exact match (and BLEU/chrF for translation) on a held-out split."""
        source = build_source(self.config.task, (self.src_tokenizer, self.tgt_tokenizer))
        bleu = self.config.task.name == "parallel"
        return evaluate(self.model, source.split(split), self.src_tokenizer, self.tgt_tokenizer, bleu=bleu, beam=beam)

    def evaluate_files(self, src: str | Path, ref: str | Path, *, beam: int = 1, alpha: float = 0.6) -> dict[str, Any]:
        """Translate ``src`` (one sentence per line) and score it against ``ref`` with sacreBLEU."""
        sources, refs = read_lines(src), read_lines(ref)
        if len(sources) != len(refs):
            raise QkvError(
                f"{src} has {len(sources):,} lines but {ref} has {len(refs):,}; they must be aligned line by line"
            )
        hyps = self.translate(sources, beam=beam, alpha=alpha)
        return {"n": len(refs), "beam": beam, **bleu_scores(hyps, refs)}

    def attention(self, text: str, *, target: str | None = None, beam: int = 1) -> AttentionMaps:
        """Every attention map (encoder, decoder, cross) of the model translating ``text``."""
        from qkv.viz.maps import attention_maps

        return attention_maps(self, text, target=target, beam=beam)

    def info(self) -> dict[str, Any]:
        """Config, parameter count, last metrics and summary."""
        metrics = None
        path = self.path / "metrics.jsonl"
        if path.exists():
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if lines:
                try:
                    metrics = json.loads(lines[-1])
                except json.JSONDecodeError:
                    metrics = None
        summary = read_json(self.path / "summary.json") if (self.path / "summary.json").exists() else None
        return {
            "run": str(self.path),
            "parameters": count_parameters(self.model),
            "config": self.config.to_dict(),
            "last_metrics": metrics,
            "summary": summary,
        }


def load(run: str | Path, *, device: str = "cpu") -> Seq2SeqRun:
    """Load a run directory written by ``qkv train`` (read-only: nothing in it is changed)."""
    path = Path(run)
    if not path.is_dir():
        raise QkvError(f"run directory {path} does not exist; train one with `qkv train --out {path}`")
    data = read_json(path / "config.json")
    if not isinstance(data, dict) or data.get("family") != "seq2seq":
        raise QkvError(f"{path / 'config.json'} is not a qkv seq2seq run config")
    try:
        cfg = RunConfig.from_dict(data)
    except (KeyError, TypeError) as e:
        raise QkvError(f"{path / 'config.json'} is incomplete ({e}); restore it or train a new run") from None
    tokenizers = load_run_tokenizers(path)
    model = build_transformer(cfg.model)
    load_weights(model, load_model_tensors(path), str(path / "model.safetensors"))
    model.to(device).eval()
    return Seq2SeqRun(path, cfg, model, *tokenizers)
