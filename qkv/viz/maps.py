"""Attention as data: every attention map of one forward pass, with the tokens on both axes.

Only this call asks the model for weights (``need_weights=True``, the reference attention path);
training and decoding keep the fused path. Nothing is stored on modules.

For a translation model the decoder maps are those of the model's **own translation** (greedy or
beam): the decoder is run once over the tokens it produced, which by causality gives exactly the
weights of each incremental decoding step (row t = step t; tested against the cached decoder). The
baselines have cross-attention only (the GRU's additive attention: one map per step; ConvS2S: one per
decoder layer), and the maps hold the kinds a model has.

Over the stacks that read one sequence (a Transformer encoder, BERT, GPT) the maps also hold their
**attention rollout** (Abnar & Zuidema, 2020): how much each input token reaches each position through
every layer so far, with the residual connection counted as half of each layer's attention.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkv.decode import beam_search, greedy
from qkv.errors import QkvError, shown

__all__ = ["KINDS", "AttentionMaps", "attention_maps", "lm_attention_maps", "rollout"]

KINDS = {
    "enc": "encoder self-attention",
    "dec": "decoder (masked) self-attention",
    "cross": "decoder-encoder (cross) attention",
    "self": "self-attention",
    "rollout": "attention rollout (Abnar & Zuidema, 2020)",
}
SELF_KINDS = ("enc", "dec", "self")  # queries and keys are positions of one sequence (rollout: not a head's map)


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
    eos_key: dict[str, int | None] = field(default_factory=dict)  # per kind: the key index of <eos>/[SEP], if any

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

    @property
    def default_kind(self) -> str:
        """The kind shown unless one is chosen: cross-attention where there is one, else self-attention."""
        return "cross" if "cross" in self.maps else "self" if "self" in self.maps else self.kinds[0]

    def to_dict(self, kind: str | None = None, layer: int | None = None, head: str = "all") -> dict[str, Any]:
        """JSON-ready: {'source', 'output', 'kinds': {kind: {'queries', 'keys', 'layers', 'heads',
        'weights': [layer][head][T][S]}}} — every map, or the ``kind``, ``layer`` and ``head`` (a number,
        'mean' over the heads, or 'all') chosen, a layer or head of the default kind when no kind is given;
        'layers' and 'heads' say which are there."""
        if kind is None and (layer is not None or head != "all"):  # kinds differ in layers and heads
            kind = self.default_kind
        self.check(kind or self.default_kind, layer, int(head) if head.isdigit() else None)
        kinds = {}
        for k, ws in self.maps.items():
            if kind is not None and k != kind:
                continue
            layers = list(range(len(ws))) if layer is None else [layer]
            chosen = [ws[i][0] for i in layers]  # each (H, T, S)
            heads: list[int | str] = list(range(chosen[0].size(0)))
            if head == "mean":
                chosen, heads = [w.mean(0, keepdim=True) for w in chosen], ["mean"]
            elif head != "all":
                chosen, heads = [w[int(head)][None] for w in chosen], [int(head)]
            kinds[k] = {
                "name": KINDS[k],
                "queries": self.queries[k],
                "keys": self.keys[k],
                "layers": layers,
                "heads": heads,
                "weights": [[[[round(float(x), 5) for x in row] for row in h] for h in w] for w in chosen],
            }
        return {"source": self.source, "output": self.output, "kinds": kinds, **self.meta}

    def to_page(self) -> dict[str, Any]:
        """What the explorer page draws, compact enough for 512-token inputs: per kind the labels and every
        weight as one byte (round(255 w), base64, layers × heads × queries × keys), with each head's
        statistics (:func:`qkv.viz.stats.head_stats`, exact)."""
        from qkv.viz.stats import head_stats

        kinds = {}
        for k, ws in self.maps.items():
            w = torch.stack([x[0] for x in ws]).float()  # (L, H, T, S)
            data = (w * 255).round().to(torch.uint8).cpu().numpy().tobytes()
            kinds[k] = {
                "name": KINDS[k],
                "queries": self.queries[k],
                "keys": self.keys[k],
                "shape": list(w.shape),
                "weights_u8": base64.b64encode(data).decode("ascii"),
                "max": round(float(w.max()), 5),
                "stepped": k in ("dec", "cross"),
            }
        return {"source": self.source, "output": self.output, "kinds": kinds, "stats": head_stats(self), **self.meta}


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
            hyp = beam_search(model, src, beam=beam, **decode.search(), **ids)[0][0]
        produced = hyp.tokens
    else:
        produced = tgt_tok.encode(target) + [tgt_tok.eos_id]
    tgt_in = torch.tensor([[tgt_tok.bos_id] + produced[:-1]], device=src.device)  # (1, T): what the decoder read
    memory, src_mask, enc_w = model.encode(src, need_weights=True)
    _, dec_w = model.decode(tgt_in, memory, src_mask, need_weights=True)
    src_labels = _labels(src_tok, src[0].tolist())
    out_labels = _labels(tgt_tok, produced)
    in_labels = _labels(tgt_tok, tgt_in[0].tolist())
    found = {  # the baselines return no encoder or decoder self-attention (None)
        "enc": [w.self_attn for w in enc_w or []],
        "dec": [w.self_attn for w in dec_w if w.self_attn is not None],
        "cross": [w.cross for w in dec_w],
    }
    maps = {k: v for k, v in found.items() if v}
    if "enc" in maps:
        maps["rollout"] = rollout(maps["enc"])
    labels = {"enc": (src_labels, src_labels), "dec": (out_labels, in_labels), "cross": (out_labels, src_labels)}
    labels["rollout"] = labels["enc"]
    eos = _position(src[0], src_tok.eos_id)
    return AttentionMaps(
        maps=maps,
        queries={k: labels[k][0] for k in maps},
        keys={k: labels[k][1] for k in maps},
        source=text,
        output=tgt_tok.decode(produced),
        meta={"family": run.config.family, "steps": len(produced)},
        eos_key={k: (None if k == "dec" else eos) for k in maps},
    )


def _position(ids: Tensor, token: int | None) -> int | None:
    """The last position of ``token`` in ``ids`` (None if absent)."""
    where = (ids == token).nonzero() if token is not None else ids[:0]
    return int(where[-1]) if len(where) else None


def rollout(layers: list[Tensor]) -> list[Tensor]:
    """Attention rollout over a stack of self-attention maps, each (B, H, T, T): after layer l,
    R_l = Â_l R_(l-1), Â = (mean over heads of A + I) / 2, rows renormalized; returns each R_l as (B, 1, T, T)."""
    out, r = [], None
    for w in layers:
        a = w.float().mean(1, keepdim=True)  # (B, 1, T, T)
        a = 0.5 * a + 0.5 * torch.eye(a.size(-1), device=a.device, dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
        out.append(r)
    return out


@torch.no_grad()
def lm_attention_maps(run: Any, text: str) -> AttentionMaps:
    """Every self-attention map of a GPT (causal) or BERT (bidirectional, with [CLS]/[SEP]) reading
    ``text``; for a GPT the output is its most likely next token."""
    model, tok = run.model, run.tokenizer
    model.eval()
    if run.config.family == "bert":
        n = len(tok.encode(text))
        if n > run.text_tokens:  # embed truncates as sentence-transformers does; a map shows all it was given
            limit = run.max_tokens
            raise QkvError(f"{n + 2} tokens ([CLS] and [SEP] included) exceed this model's {limit}: shorten the text")
        ids, mask = run.encode_texts([text])
        _, weights = model.encode(ids, mask, need_weights=True)
        output = ""
    else:
        ids = torch.tensor([run.encode_prompt(text)], device=run.device)
        logits, weights = model.decode(ids, need_weights=True)
        output = tok.decode_all([int(logits[0, -1].argmax())])
    labels = _labels(tok, ids[0].tolist())
    self_maps = [w.self_attn for w in weights]
    eos = _position(ids[0], tok.eos_id)  # BERT's [SEP]; a GPT's prompt has none
    if run.config.family == "bert":  # shown by their role, whatever a character vocabulary calls them
        labels[0], labels[-1] = "[CLS]", "[SEP]"
    return AttentionMaps(
        maps={"self": self_maps, "rollout": rollout(self_maps)},
        queries={"self": labels, "rollout": labels},
        keys={"self": labels, "rollout": labels},
        source=text,
        output=output,
        meta={"family": run.config.family, "steps": len(labels)},
        eos_key={"self": eos, "rollout": eos},
    )
