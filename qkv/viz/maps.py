"""Attention as data: every attention map of one forward pass, with the tokens on both axes.

Only this call asks the model for weights (``need_weights=True``, the reference attention path);
training and decoding keep the fused path. Nothing is stored on modules.

For a translation model the decoder maps are those of the model's **own translation** (greedy or
beam): the decoder is run once over the tokens it produced, which by causality gives exactly the
weights of each incremental decoding step (row t = step t; tested against the cached decoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkv.decode import beam_search, greedy
from qkv.errors import QkvError, shown

__all__ = ["KINDS", "AttentionMaps", "attention_maps", "lm_attention_maps"]

KINDS = {
    "enc": "encoder self-attention",
    "dec": "decoder (masked) self-attention",
    "cross": "decoder-encoder (cross) attention",
    "self": "self-attention",
}


@dataclass
class AttentionMaps:
    """Per kind of attention: a list over layers of (B, H, T, S) weight tensors, and the tokens
    labelling the query (T) and key (S) axes."""

    maps: dict[str, list[Tensor]]
    queries: dict[str, list[str]]
    keys: dict[str, list[str]]
    source: str
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        """The kinds present, e.g. ['enc', 'dec', 'cross']."""
        return list(self.maps)

    def check(self, kind: str, layer: int | None = None, head: int | None = None) -> None:
        """Raise a QkvError naming what exists when ``kind``/``layer``/``head`` is out of range."""
        if kind not in self.maps:
            raise QkvError(f"this model has no {shown(kind)} attention; choose one of {', '.join(self.kinds)}")
        layers = len(self.maps[kind])
        if layer is not None and not 0 <= layer < layers:
            raise QkvError(f"layer {layer} does not exist: the {KINDS[kind]} has layers 0..{layers - 1}")
        heads = self.maps[kind][0].size(1)
        if head is not None and not 0 <= head < heads:
            raise QkvError(f"head {head} does not exist: each layer has heads 0..{heads - 1}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {'source', 'output', 'kinds': {kind: {'queries', 'keys', 'weights': [L][H][T][S]}}}."""
        kinds = {
            k: {
                "name": KINDS[k],
                "queries": self.queries[k],
                "keys": self.keys[k],
                "weights": [[[[round(float(x), 5) for x in row] for row in h] for h in w[0]] for w in ws],
            }
            for k, ws in self.maps.items()
        }
        return {"source": self.source, "output": self.output, "kinds": kinds, **self.meta}


def _labels(tok: Any, ids: list[int]) -> list[str]:
    """Readable labels: the token strings, with whitespace made visible."""
    return [tok.id_to_token(i).replace("\n", "⏎").replace(" ", "␣") for i in ids]


@torch.no_grad()
def attention_maps(run: Any, text: str, *, target: str | None = None, beam: int = 1) -> AttentionMaps:
    """All attention maps of ``run``'s model on ``text``: encoder self-attention, and the decoder's
    self- and cross-attention while it produces its own translation (or the given ``target``)."""
    model, src_tok, tgt_tok = run.model, run.src_tokenizer, run.tgt_tokenizer
    model.eval()
    src = run.encode_source([text])  # (1, S) with <eos>
    if target is None:
        decode = run.config.decode  # the length limit and length penalty the run translates with
        ids = {"bos_id": tgt_tok.bos_id, "eos_id": tgt_tok.eos_id, "max_len": decode.max_len(model, src)}
        if beam == 1:
            hyp = greedy(model, src, **ids)[0]
        else:
            hyp = beam_search(model, src, beam=beam, alpha=decode.alpha, penalty=decode.penalty, **ids)[0][0]
        produced = hyp.tokens
    else:
        produced = tgt_tok.encode(target) + [tgt_tok.eos_id]
    tgt_in = torch.tensor([[tgt_tok.bos_id] + produced[:-1]], device=src.device)  # (1, T): what the decoder read
    memory, src_mask, enc_w = model.encode(src, need_weights=True)
    _, dec_w = model.decode(tgt_in, memory, src_mask, need_weights=True)
    src_labels = _labels(src_tok, src[0].tolist())
    out_labels = _labels(tgt_tok, produced)
    in_labels = _labels(tgt_tok, tgt_in[0].tolist())
    return AttentionMaps(
        maps={
            "enc": [w.self_attn for w in enc_w],
            "dec": [w.self_attn for w in dec_w],
            "cross": [w.cross for w in dec_w],
        },
        queries={"enc": src_labels, "dec": out_labels, "cross": out_labels},
        keys={"enc": src_labels, "dec": in_labels, "cross": src_labels},
        source=text,
        output=tgt_tok.decode(produced),
        meta={"family": run.config.family, "steps": len(produced)},
    )


@torch.no_grad()
def lm_attention_maps(run: Any, text: str) -> AttentionMaps:
    """Every self-attention map of a GPT (causal) or BERT (bidirectional, with [CLS]/[SEP]) reading
    ``text``; for a GPT the output is its most likely next token."""
    model, tok = run.model, run.tokenizer
    model.eval()
    if run.config.family == "bert":
        ids, mask = run.encode_texts([text])
        _, weights = model.encode(ids, mask, need_weights=True)
        output = ""
    else:
        ids = torch.tensor([run.encode_prompt(text)], device=run.device)
        logits, weights = model.decode(ids, need_weights=True)
        output = tok.decode_all([int(logits[0, -1].argmax())])
    labels = _labels(tok, ids[0].tolist())
    return AttentionMaps(
        maps={"self": [w.self_attn for w in weights]},
        queries={"self": labels},
        keys={"self": labels},
        source=text,
        output=output,
        meta={"family": run.config.family, "steps": len(labels)},
    )
