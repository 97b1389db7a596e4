"""Using a run from Python: ``qkv.load(RUN)`` and the methods the CLI verbs call.

``load`` returns a :class:`Seq2SeqRun` (``translate``, ``evaluate``), a :class:`GPTRun`
(``generate``) or a :class:`BERTRun` (``embed``), by the family in the run's config.json; each has
``attention`` (every attention map, as data) and ``info``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from qkv.checkpoint import load_model_tensors, load_weights, read_json
from qkv.data import Vocab, build_source, encode_source, read_lines
from qkv.decode import beam_search, generate, greedy
from qkv.errors import QkvError
from qkv.families import bleu_scores, build_model, evaluate, load_run_tokenizers
from qkv.models import count_parameters
from qkv.models.bert import mean_pool
from qkv.recipes import RunConfig

__all__ = ["BERTRun", "GPTRun", "Run", "Seq2SeqRun", "load"]

if TYPE_CHECKING:
    from qkv.viz.maps import AttentionMaps


@dataclass
class Run:
    """A run directory loaded for use: its config, model and tokenizer(s)."""

    path: Path
    config: RunConfig
    model: Any

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
            "family": self.config.family,
            "parameters": count_parameters(self.model),
            "config": self.config.to_dict(),
            "last_metrics": metrics,
            "summary": summary,
        }


@dataclass
class Seq2SeqRun(Run):
    """A trained encoder–decoder run: translate, evaluate, attention, info."""

    src_tokenizer: Any = None
    tgt_tokenizer: Any = None

    def encode_source(self, texts: list[str]) -> torch.Tensor:
        """Source texts -> (B, S) ids with <eos>; a text too long for the model is a QkvError."""
        limit = self.config.model.max_len - 1
        for i, text in enumerate(texts):
            n = len(self.src_tokenizer.encode(text))
            if n > limit:
                raise QkvError(
                    f"input {i + 1} has {n} tokens; this model reads at most {limit}: shorten it or split it"
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

        if self.config.family != "seq2seq":
            raise QkvError(
                f"attention maps are drawn for Transformer runs; {self.path} is a {self.config.family} baseline run"
            )

        return attention_maps(self, text, target=target, beam=beam)


@dataclass
class GPTRun(Run):
    """A decoder-only language model: generate, attention, info."""

    tokenizer: Any = None

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
        if temperature < 0:
            raise QkvError(f"temperature must be >= 0 (got {temperature}); 0 means greedy")
        if top_k is not None and top_k < 1:
            raise QkvError(f"top_k must be >= 1 (got {top_k})")
        if top_p is not None and not 0 < top_p <= 1:
            raise QkvError(f"top_p must be in (0, 1] (got {top_p})")
        tok = self.tokenizer
        text_model = isinstance(tok, Vocab)  # qkv's character vocabulary: its special symbols never occur in text
        produced: list[int] = []
        shown = ""

        def stream(step_tokens: torch.Tensor) -> None:
            nonlocal shown
            if on_text is None:
                return
            produced.append(int(step_tokens[0]))
            text = tok.decode_all(produced)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                on_text(text[len(shown) :])
                shown = text

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
            on_step=stream if on_text is not None else None,
        )
        return [tok.decode(ids) for ids in outs]

    def attention(self, text: str) -> AttentionMaps:
        """Every self-attention map of the model reading ``text``."""
        from qkv.viz.maps import lm_attention_maps

        return lm_attention_maps(self, text)


@dataclass
class BERTRun(Run):
    """An encoder-only model: embed, attention, info."""

    tokenizer: Any = None

    @property
    def max_tokens(self) -> int:
        """Tokens per text, [CLS] and [SEP] included (longer texts are truncated, as sentence-transformers does)."""
        limit = self.config.task.max_seq_len
        return min(limit, self.model.cfg.max_len) if limit else self.model.cfg.max_len

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] text [SEP] ids (B, T), right-padded, and the attention mask (B, T)."""
        tok = self.tokenizer
        rows = [[tok.bos_id] + ids[: self.max_tokens - 2] + [tok.eos_id] for ids in tok.encode_batch(texts)]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    @torch.no_grad()
    def embed(self, texts: list[str] | str, *, normalize: bool = False, batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings (N, d_model): mean of the last hidden states over the attention mask,
        L2-normalized when asked."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise QkvError("nothing to embed: give at least one text")
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.cfg.d_model)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            ids, mask = self.encode_texts([texts[j] for j in idx])
            pooled = mean_pool(self.model(ids, mask), mask)
            out[idx] = F.normalize(pooled, dim=-1) if normalize else pooled
        return out

    def attention(self, text: str) -> AttentionMaps:
        """Every self-attention map of the model reading ``text``."""
        from qkv.viz.maps import lm_attention_maps

        return lm_attention_maps(self, text)


def _special_ids(tok: Vocab) -> list[int]:
    """The ids of a character vocabulary's special symbols (never part of the text itself)."""
    mask = tok.token_id("<mask>")
    return [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id] + ([mask] if mask is not None else [])


def load(run: str | Path, *, device: str = "cpu") -> Seq2SeqRun | GPTRun | BERTRun:
    """Load a run directory written by ``qkv train`` or ``qkv convert`` (read-only: nothing is changed)."""
    path = Path(run)
    if not path.is_dir():
        raise QkvError(f"run directory {path} does not exist; train one with `qkv train --out {path}`")
    data = read_json(path / "config.json")
    if not isinstance(data, dict) or "model" not in data:
        raise QkvError(f"{path / 'config.json'} is not a qkv run config")
    try:
        cfg = RunConfig.from_dict(data)
    except (KeyError, TypeError) as e:
        raise QkvError(f"{path / 'config.json'} is incomplete ({e}); restore it or train a new run") from None
    tokenizers = load_run_tokenizers(path, cfg.family)
    model = build_model(cfg)
    load_weights(model, load_model_tensors(path), str(path / "model.safetensors"))
    model.to(device).eval()
    if cfg.family == "gpt":
        return GPTRun(path, cfg, model, tokenizers[0])
    if cfg.family == "bert":
        return BERTRun(path, cfg, model, tokenizers[0])
    return Seq2SeqRun(path, cfg, model, *tokenizers)
