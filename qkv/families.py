"""What differs between model families in training: data, model, loss and evaluation.

The trainer (:mod:`qkv.train`) is one loop for all; it asks the run's family for

* its tokenizers (trained from the data, or read from the run directory when resuming),
* the model (the module saved in the run, and the module trained — BERT trains its MLM wrapper),
* a resumable stream of batches, the summed loss of a batch, and held-out evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qkv.config import replace
from qkv.data import build_source, encode_pairs
from qkv.data.bpe import load_tokenizer
from qkv.data.lm import TextSource
from qkv.decode import beam_search, greedy
from qkv.models import Transformer
from qkv.models.bert import BERT, BERTForMLM
from qkv.models.convs2s import ConvS2S
from qkv.models.gpt import GPT
from qkv.models.rnn import RNNSeq2Seq
from qkv.objectives import label_smoothed_loss, token_loss
from qkv.recipes import TRANSLATION_FAMILIES, RunConfig

__all__ = ["MODEL_CLASSES", "Family", "bleu_scores", "build_model", "evaluate", "make_family", "tokenizer_files"]

# family -> the model class its config builds
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "seq2seq": Transformer,
    "rnn": RNNSeq2Seq,
    "cnn": ConvS2S,
    "gpt": GPT,
    "bert": BERT,
}


def build_model(cfg: RunConfig) -> nn.Module:
    """A fresh model for a run config (the module saved in the run)."""
    return MODEL_CLASSES[cfg.family](cfg.model)


def tokenizer_files(family: str) -> tuple[str, ...]:
    """The tokenizer files of a run of ``family``."""
    return ("src_tokenizer.json", "tgt_tokenizer.json") if family in TRANSLATION_FAMILIES else ("tokenizer.json",)


def load_run_tokenizers(run: Path, family: str = "seq2seq") -> tuple[Any, ...]:
    """The tokenizers saved in a run directory."""
    return tuple(load_tokenizer(Path(run) / name) for name in tokenizer_files(family))


class Family:
    """The family-specific parts of training (see the module docstring)."""

    name = ""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.tokenizers: tuple[Any, ...] = ()

    def model_config(self) -> Any:
        """The model config with vocabulary sizes filled in from the tokenizers."""
        raise NotImplementedError

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        """(the module saved in the run, the module trained)."""
        raise NotImplementedError

    def stream(self) -> Any:
        """A resumable stream of training batches."""
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: Any, eps: float) -> torch.Tensor:
        """The batch's loss, summed over its predicted tokens."""
        raise NotImplementedError

    def evaluate(self, core: nn.Module, split: str) -> dict[str, Any]:
        """Metrics on a held-out split."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> str:
        """A short progress line for ``metrics``."""
        return f"valid loss {metrics['loss']:.4f}"

    def final_split(self) -> str:
        """The split the final summary reports."""
        return "valid"

    def save_tokenizers(self, out: Path) -> None:
        """Write the tokenizer files into the run directory."""
        for tok, name in zip(self.tokenizers, tokenizer_files(self.name), strict=True):
            tok.save(out / name)


class Seq2SeqFamily(Family):
    """Encoder–decoder translation (the Transformer): built-in tasks or parallel text."""

    name = "seq2seq"

    def __init__(self, cfg: RunConfig, tokenizers: tuple[Any, ...] | None = None, log: Any = None) -> None:
        super().__init__(cfg)
        self.source = build_source(cfg.task, tokenizers, log=log)  # type: ignore[arg-type]
        self.tokenizers = (self.source.src_tok, self.source.tgt_tok)
        self.bleu = cfg.task.name == "parallel"
        self._splits: dict[str, list[tuple[str, str]]] = {}

    def model_config(self) -> Any:
        src, tgt = self.tokenizers
        return replace(self.cfg.model, "model", src_vocab_size=len(src), tgt_vocab_size=len(tgt))

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        model = MODEL_CLASSES[self.name](model_cfg)
        return model, model

    def stream(self) -> Any:
        tc = self.cfg.train
        return self.source.stream(tc.batch_size, tc.max_tokens, tc.seed)

    def loss_sum(self, model: nn.Module, batch: Any, eps: float) -> torch.Tensor:
        return label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, eps, self.cfg.model.pad_id)

    def split(self, name: str) -> list[tuple[str, str]]:
        """Held-out text pairs (kept after the first read)."""
        if name not in self._splits:
            self._splits[name] = self.source.split(name)
        return self._splits[name]

    def evaluate(self, core: nn.Module, split: str) -> dict[str, Any]:
        return evaluate(core, self.split(split), *self.tokenizers, bleu=self.bleu)  # type: ignore[arg-type]

    def headline(self, metrics: dict[str, Any]) -> str:
        shown = f"BLEU {metrics['bleu']:.2f}" if self.bleu else f"exact match {metrics['exact_match']:.4f}"
        return f"valid loss {metrics['loss']:.4f}, token acc {metrics['token_accuracy']:.4f}, {shown}"

    def final_split(self) -> str:
        has_test = self.cfg.task.name != "parallel" or self.cfg.task.test_src is not None
        return "test" if has_test else "valid"


class RNNFamily(Seq2SeqFamily):
    """The GRU encoder–decoder baseline: same data, loss, decoding and metrics as the Transformer."""

    name = "rnn"


class CNNFamily(Seq2SeqFamily):
    """The ConvS2S baseline: same data, loss, decoding and metrics as the Transformer."""

    name = "cnn"


class LMFamily(Family):
    """Language models on a text file: GPT (causal) and BERT (masked)."""

    def __init__(self, cfg: RunConfig, tokenizers: tuple[Any, ...] | None = None, log: Any = None) -> None:
        super().__init__(cfg)
        tok = tokenizers[0] if tokenizers else None
        self.source = TextSource(cfg.task, tok, mlm=self.name == "bert", log=log)
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
        device = next(core.parameters()).device
        total, tokens, correct = 0.0, 0, 0
        for batch in self._eval[key]:
            b = batch.to(device)
            logits, target = self.logits_and_target(trained, b)
            total += float(token_loss(logits, target))
            keep = target != -100
            correct += int(((logits.argmax(-1) == target) & keep).sum())
            tokens += int(keep.sum())
        return {"loss": total / tokens, "token_accuracy": correct / tokens, "n": tokens}

    def trained_view(self, core: nn.Module) -> nn.Module:
        """The module whose forward gives logits."""
        return core

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of a batch."""
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: Any, eps: float) -> torch.Tensor:
        logits, target = self.logits_and_target(model, batch)
        return token_loss(logits, target, eps)


class GPTFamily(LMFamily):
    """Causal language modelling."""

    name = "gpt"

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        model = GPT(model_cfg)
        return model, model

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch.idx), batch.targets


class BERTFamily(LMFamily):
    """Masked-language-model pretraining."""

    name = "bert"

    def build(self, model_cfg: Any) -> tuple[nn.Module, nn.Module]:
        bert = BERT(model_cfg)
        return bert, BERTForMLM(bert)

    def trained_view(self, core: nn.Module) -> nn.Module:
        return BERTForMLM(core)  # type: ignore[arg-type]

    def logits_and_target(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch.ids), batch.labels

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"valid MLM loss {metrics['loss']:.4f}, masked-token accuracy {metrics['token_accuracy']:.4f}"


FAMILY_CLASSES: dict[str, type[Family]] = {
    "seq2seq": Seq2SeqFamily,
    "rnn": RNNFamily,
    "cnn": CNNFamily,
    "gpt": GPTFamily,
    "bert": BERTFamily,
}


def make_family(cfg: RunConfig, tokenizers: tuple[Any, ...] | None = None, log: Any = None) -> Family:
    """The family object of a run config."""
    return FAMILY_CLASSES[cfg.family](cfg, tokenizers, log)  # type: ignore[call-arg]


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
) -> dict[str, Any]:
    """Loss (mean NLL per target token), token accuracy (teacher-forced), exact match of the decoded
    output (greedy, or beam search), and — with ``bleu`` — sacreBLEU BLEU and chrF on detokenized text."""
    model.eval()
    device = next(model.parameters()).device
    nll, correct, tokens = 0.0, 0, 0
    hyps: list[str] = []
    pairs = sorted(pairs, key=lambda p: len(p[0]))  # similar lengths share a batch; metrics ignore order
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        b = encode_pairs(chunk, src_tok, tgt_tok).to(device)
        logits = model(b.src, b.tgt_in)
        real = b.tgt_out != tgt_tok.pad_id
        nll += float(label_smoothed_loss(logits, b.tgt_out, 0.0, tgt_tok.pad_id))
        correct += int(((logits.argmax(-1) == b.tgt_out) & real).sum())
        tokens += int(real.sum())
        ids = {"bos_id": tgt_tok.bos_id, "eos_id": tgt_tok.eos_id}
        if beam == 1:
            decoded = greedy(model, b.src, **ids)
        else:
            decoded = [h[0] for h in beam_search(model, b.src, beam=beam, **ids)]
        hyps.extend(tgt_tok.decode(h.tokens) for h in decoded)
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
