"""The encoder–decoder families (the Transformer and its RNN and ConvS2S baselines): their training
hooks, their run class (translate, evaluate, attention), and the metrics they share — teacher-forced
loss and token accuracy, exact match of the decoded output, sacreBLEU BLEU and chrF.

Shapes: B sentences, S source length, T target length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from qkv.config import replace
from qkv.data import build_source, encode_pairs, encode_source, read_lines
from qkv.decode import DecodeConfig, beam_search, greedy
from qkv.errors import QkvError
from qkv.families.base import Run, TrainingHooks, model_device
from qkv.objectives import label_smoothed_loss

if TYPE_CHECKING:
    from qkv.families import Family
    from qkv.recipes import RunConfig
    from qkv.viz.maps import AttentionMaps

__all__ = [
    "DECODE_ROWS",
    "EVAL_LOGITS",
    "TranslationHooks",
    "TranslationRun",
    "bleu_scores",
    "evaluate",
    "teacher_forced",
    "translate_batch",
]

DECODE_ROWS = 320
"""Rows (sentences × beam width) ``translate`` decodes together unless told: 320 sentences greedy, 64 at beam 5.
Measured on the Multi30k test set (2-core CPU, ``benchmarks/translate_batch.py``): greedy decodes 1.3× as
fast 256–320 sentences at a time as 64 at a time; beam 5 gains nothing past 64 sentences (320 rows)."""


def translate_batch(
    model: Any, src: torch.Tensor, tgt_tok: Any, *, beam: int = 1, alpha: float = 0.6, **kw: Any
) -> list:
    """The best hypothesis for each source row of src (B, S): greedy when ``beam`` is 1, else beam search
    (``penalty`` and ``early_stopping`` among ``kw`` are beam search's)."""
    search = {"penalty": kw.pop("penalty", "gnmt"), "early_stopping": kw.pop("early_stopping", False)}
    ids = {"bos_id": tgt_tok.bos_id, "eos_id": tgt_tok.eos_id, **kw}
    if beam == 1:
        return greedy(model, src, **ids)
    return [h[0] for h in beam_search(model, src, beam=beam, alpha=alpha, **search, **ids)]


EVAL_LOGITS = 1 << 22
"""The most logits :func:`teacher_forced` holds at once (16 MB in float32): a block of target positions at a
time, so that a large vocabulary (Marian's 58k) over a batch of long sentences is not gigabytes at once."""


@torch.no_grad()
def teacher_forced(model: Any, src: torch.Tensor, tgt_in: torch.Tensor, target: torch.Tensor, pad_id: int) -> tuple:
    """(summed NLL, correct next tokens, target tokens) of predicting ``target`` (B, T) from ``src`` (B, S)
    and the shifted ``tgt_in`` (B, T); the logits are made :data:`EVAL_LOGITS` at a time."""
    memory, src_mask, _ = model.encode(src)
    states, _ = model.decode_states(tgt_in, memory, src_mask)  # (B, T, d)
    states, target = states.reshape(-1, states.size(-1)), target.reshape(-1)  # (B*T, d), (B*T,)
    rows = max(1, EVAL_LOGITS // model.generator.out_features)
    nll, correct = 0.0, 0
    for i in range(0, target.numel(), rows):
        logits, t = model.generator(states[i : i + rows]), target[i : i + rows]  # (rows, V), (rows,)
        nll += float(label_smoothed_loss(logits, t, 0.0, pad_id))
        correct += int(((logits.argmax(-1) == t) & (t != pad_id)).sum())
    return nll, correct, int((target != pad_id).sum())


@torch.no_grad()
def evaluate(
    model: Any,
    pairs: list[tuple[str, str]],
    src_tok: Any,
    tgt_tok: Any,
    *,
    batch_size: int = 128,
    bleu: bool = False,
    beam: int = 1,
    decode: DecodeConfig | None = None,
) -> dict[str, Any]:
    """Loss (mean NLL per target token), token accuracy (teacher-forced), exact match of the decoded
    output (greedy, or beam search of width ``beam``; or as ``decode`` says), and — with ``bleu`` —
    sacreBLEU BLEU and chrF on detokenized text."""
    d = decode or DecodeConfig(beam=beam)
    model.eval()
    device = model_device(model)
    nll, correct, tokens = 0.0, 0, 0
    hyps: list[str] = []
    pairs = sorted(pairs, key=lambda p: len(p[0]))  # similar lengths share a batch; metrics ignore order
    for i in range(0, len(pairs), batch_size):
        b = encode_pairs(pairs[i : i + batch_size], src_tok, tgt_tok, device)
        batch_nll, batch_correct, batch_tokens = teacher_forced(model, b.src, b.tgt_in, b.tgt_out, tgt_tok.pad_id)
        nll, correct, tokens = nll + batch_nll, correct + batch_correct, tokens + batch_tokens
        limit = d.max_len(model, b.src)
        found = translate_batch(model, b.src, tgt_tok, beam=d.beam, max_len=limit, **d.search())
        hyps.extend(tgt_tok.decode(h.tokens) for h in found)
    refs = [t for _, t in pairs]
    out: dict[str, Any] = {
        "loss": nll / tokens,
        "token_accuracy": correct / tokens,
        "exact_match": sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(pairs),
        "n": len(pairs),
    }
    if bleu:
        out.update(bleu_scores(hyps, refs))
    return out


def bleu_scores(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    """sacreBLEU on detokenized text: cased BLEU, lowercased BLEU (-lc), chrF, and their signatures."""
    import sacrebleu

    cased = sacrebleu.metrics.BLEU()
    lower = sacrebleu.metrics.BLEU(lowercase=True)
    chrf = sacrebleu.metrics.CHRF()
    return {
        "bleu": cased.corpus_score(hyps, [refs]).score,
        "bleu_lc": lower.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "bleu_signature": str(cased.get_signature()),
        "bleu_lc_signature": str(lower.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


class TranslationHooks(TrainingHooks):
    """Translation on a built-in task or parallel text: label-smoothed loss, greedy decoding for the
    held-out metrics (BLEU on parallel text, exact match on the built-in tasks)."""

    def __init__(
        self,
        family: Family,
        cfg: RunConfig,
        tokenizers: tuple[Any, ...] | None = None,
        log: Any = None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(family, cfg)
        self.source = build_source(cfg.task, tokenizers, log=log, workdir=workdir)  # type: ignore[arg-type]
        self.tokenizers = (self.source.src_tok, self.source.tgt_tok)
        self.bleu = cfg.task.name == "parallel"
        self._splits: dict[str, list[tuple[str, str]]] = {}

    def model_config(self) -> Any:
        src, tgt = self.tokenizers
        return replace(self.cfg.model, "model", src_vocab_size=len(src), tgt_vocab_size=len(tgt))

    def stream(self) -> Any:
        tc = self.cfg.train
        return self.source.stream(tc.batch_size, tc.max_tokens, tc.seed)

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch.src, batch.tgt_in), batch.tgt_out

    def loss_sum(self, model: nn.Module, batch: Any, eps: float) -> torch.Tensor:
        """The model's own loss (the generator and the loss in one pass), which gives the NLL for free."""
        sums = model(batch.src, batch.tgt_in, target=batch.tgt_out, label_smoothing=eps)
        if self.nll is not None:
            self.nll.append(float(sums.nll))
        return sums.loss

    def ignore_index(self) -> int:
        return self.cfg.model.pad_id

    def split(self, name: str) -> list[tuple[str, str]]:
        """Held-out text pairs (kept after the first read)."""
        if name not in self._splits:
            self._splits[name] = self.source.split(name)
        return self._splits[name]

    def evaluate(self, core: nn.Module, split: str) -> dict[str, Any]:
        return evaluate(core, self.split(split), *self.tokenizers, bleu=self.bleu)

    def headline(self, metrics: dict[str, Any]) -> str:
        shown = f"BLEU {metrics['bleu']:.2f}" if self.bleu else f"exact match {metrics['exact_match']:.4f}"
        return f"valid loss {metrics['loss']:.4f}, token acc {metrics['token_accuracy']:.4f}, {shown}"

    def final_split(self) -> str:
        return "test" if self.source.has_split("test") else "valid"

    def describe_data(self) -> str:
        return self.cfg.task.name if self.cfg.task.data is None else f"the store {self.cfg.task.data}"


@dataclass
class TranslationRun(Run):
    """A trained encoder–decoder run: translate, evaluate, attention, info."""

    src_tokenizer: Any = None
    tgt_tokenizer: Any = None

    TOKENIZER_FILES: ClassVar[tuple[str, ...]] = ("src_tokenizer.json", "tgt_tokenizer.json")

    def encode_source(self, texts: list[str]) -> torch.Tensor:
        """Source texts -> (B, S) ids with <eos>, on the model's device; a text too long for the model
        is a QkvError."""
        limit = self.config.model.max_len - 1
        for i, text in enumerate(texts):
            n = len(self.src_tokenizer.encode(text))
            if n > limit:
                raise QkvError(
                    f"input {i + 1} has {n} tokens; this model reads at most {limit}: shorten it or split it"
                )
        return encode_source(texts, self.src_tokenizer, self.device)

    @torch.no_grad()
    def translate(
        self,
        texts: list[str] | str,
        *,
        beam: int | None = None,
        alpha: float | None = None,
        max_len: int | None = None,
        batch_size: int | None = None,
        early_stopping: bool | None = None,
    ) -> list[str]:
        """Translate texts (greedy when ``beam`` is 1, else beam search), ``batch_size`` sentences at a time
        (default :data:`DECODE_ROWS` ÷ beam width); returns one string per text. What is not given comes from
        the run's ``decode`` config (its preset's way of decoding)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        d = self.config.decode
        beam, search = self._decoding(beam, alpha, early_stopping)
        if batch_size is None:
            batch_size = max(1, DECODE_ROWS // max(beam, 1))
        elif batch_size < 1:
            raise QkvError(f"batch size must be >= 1 (got {batch_size})")
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out: list[str] = [""] * len(texts)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            src = self.encode_source([texts[j] for j in idx])
            limit = d.max_len(self.model, src) if max_len is None else max_len
            tok = self.tgt_tokenizer
            hyps = translate_batch(self.model, src, tok, beam=beam, max_len=limit, **search)
            for j, h in zip(idx, hyps, strict=True):
                out[j] = self.tgt_tokenizer.decode(h.tokens)
        return out

    def translate_lines(
        self, lines: Iterable[str], *, chunk: int = 2048, batch_size: int | None = None, **options: Any
    ) -> Iterator[str]:
        """Translate a stream of lines of any length in constant memory: ``chunk`` lines at a time (sorted
        by length within the chunk, in batches of ``batch_size``), one output per line in order; an empty
        line gives an empty line. An error names the line it is about. ``options`` as for :meth:`translate`."""
        if chunk < 1 or (batch_size is not None and batch_size < 1):
            raise QkvError(f"chunk and batch size must be >= 1 (got {chunk}, {batch_size})")
        for start, block in _chunks(lines, chunk):
            texts = [t for t in block if t.strip()]
            try:
                outs = iter(self.translate(texts, batch_size=batch_size, **options)) if texts else iter(())
            except QkvError as e:
                bad = self._first_bad(block)
                if bad is None:  # about the options (a beam width, a length penalty), not a line
                    raise
                raise QkvError(f"line {start + bad - 1}: {e}") from None
            yield from (next(outs) if t.strip() else "" for t in block)

    def _first_bad(self, block: list[str]) -> int | None:
        """The 1-based position in ``block`` of the first line the model cannot read (None: it reads all)."""
        for i, text in enumerate(block, start=1):
            try:
                if text.strip():
                    self.encode_source([text])
            except QkvError:
                return i
        return None

    def evaluate(
        self,
        split: str = "test",
        *,
        beam: int | None = None,
        alpha: float | None = None,
        early_stopping: bool | None = None,
    ) -> dict[str, Any]:
        """Loss, token accuracy, exact match (and BLEU/chrF for translation) on a held-out split, decoded
        as the run's ``decode`` config says unless ``beam`` / ``alpha`` / ``early_stopping`` are given."""
        source = build_source(self.config.task, (self.src_tokenizer, self.tgt_tokenizer))
        bleu = self.config.task.name == "parallel"
        d = self.config.decode
        given = {"beam": beam, "alpha": alpha, "early_stopping": early_stopping}
        d = replace(d, "decode", **{k: v for k, v in given.items() if v is not None})
        pairs = source.split(split)
        return evaluate(self.model, pairs, self.src_tokenizer, self.tgt_tokenizer, bleu=bleu, decode=d)

    def evaluate_files(
        self,
        src: str | Path,
        ref: str | Path,
        *,
        beam: int | None = None,
        alpha: float | None = None,
        early_stopping: bool | None = None,
    ) -> dict[str, Any]:
        """Translate ``src`` (one sentence per line) and score it against ``ref`` with sacreBLEU."""
        sources, refs = read_lines(src), read_lines(ref)
        if len(sources) != len(refs):
            raise QkvError(
                f"{src} has {len(sources):,} lines but {ref} has {len(refs):,}; they must be aligned line by line"
            )
        hyps = self.translate(sources, beam=beam, alpha=alpha, early_stopping=early_stopping)
        beam, search = self._decoding(beam, alpha, early_stopping)
        return {"n": len(refs), "beam": beam, "early_stopping": search["early_stopping"], **bleu_scores(hyps, refs)}

    def _decoding(
        self, beam: int | None, alpha: float | None, early_stopping: bool | None
    ) -> tuple[int, dict[str, Any]]:
        """The beam width and beam search's options (:meth:`DecodeConfig.search`) to decode with: those given,
        the run's ``decode`` config's for the rest."""
        d = self.config.decode
        given = {"alpha": alpha, "early_stopping": early_stopping}
        return d.beam if beam is None else beam, d.search() | {k: v for k, v in given.items() if v is not None}

    def examples(self, split: str, n: int = 5) -> list[tuple[str, str, str]]:
        """(source, reference, translation) of the first ``n`` pairs of a held-out split."""
        pairs = build_source(self.config.task, (self.src_tokenizer, self.tgt_tokenizer)).split(split)[:n]
        hyps = self.translate([s for s, _ in pairs]) if pairs else []
        return [(s, r, h) for (s, r), h in zip(pairs, hyps, strict=True)]

    def attention(self, text: str, *, target: str | None = None, beam: int = 1) -> AttentionMaps:
        """Every attention map the model has (Transformer: encoder, decoder, cross and rollout; the
        baselines: cross) while translating ``text``."""
        from qkv.viz.maps import attention_maps

        return attention_maps(self, text, target=target, beam=beam)

    def example(self) -> str | None:
        """The first held-out source sentence of the run's data (validation, else test), or None when the
        run has none to read (a converted model, data moved away)."""
        try:
            source = build_source(self.config.task, (self.src_tokenizer, self.tgt_tokenizer))
            split = next((s for s in ("valid", "test") if source.has_split(s)), None)
            pairs = source.split(split)[:1] if split else []
        except (QkvError, OSError):
            return None
        return pairs[0][0] if pairs else None


def _chunks(lines: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(1-based number of the first line, the next ``size`` lines) until ``lines`` runs out."""
    it, start = iter(lines), 1
    while block := list(islice(it, size)):
        yield start, block
        start += len(block)
