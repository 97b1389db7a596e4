"""Decoding: greedy and beam search for encoder–decoder models, sampling for decoder-only models —
all incremental on the KV cache.

Decoding is a few named steps: ``encode`` the source once (cross-attention K/V are computed from the
memory at the first step and kept), then ``next_log_probs`` per step, feeding only the newest token
when a cache is used (or the whole prefix without one: the slow reference, tested to give identical
tokens). The caches and the token buffers are preallocated to the longest sequence decoding can
reach, known when it starts; every tensor is made on the device of the model's input. Every decoder
runs under ``torch.inference_mode`` (no autograd bookkeeping; they return token ids, not tensors).

The encoder–decoder decoders take any :class:`~qkv.models.translation.EncoderDecoderModel` (the
Transformer, ``RNNSeq2Seq``, ``ConvS2S``); ``generate`` takes a decoder-only model (GPT).

Shapes: B sentences, K beams, S source length, V target vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from qkv.config import ConfigBase, check
from qkv.errors import QkvError
from qkv.layers import DecoderCache
from qkv.models.translation import EncoderDecoderModel as EncoderDecoder

__all__ = [
    "MAX_BEAM",
    "PENALTIES",
    "DecodeConfig",
    "EncoderDecoder",
    "Hypothesis",
    "beam_search",
    "check_scores",
    "generate",
    "greedy",
    "length_penalty",
    "next_log_probs",
    "sample_next",
    "top_candidates",
]


MAX_BEAM = 64  # a wider beam costs memory in proportion and has never helped translation quality


@dataclass
class Hypothesis:
    """A decoded target: ``tokens`` (without <bos>, ending in <eos> unless cut at max length),
    ``log_prob`` its model score (sum of token log-probabilities) and ``score`` the ranking score
    (``log_prob`` divided by the length penalty)."""

    tokens: list[int]
    log_prob: float
    score: float


PENALTIES = ("gnmt", "transformers")


def length_penalty(length: int, alpha: float, kind: str = "gnmt") -> float:
    """What a hypothesis's log-probability is divided by to rank it: GNMT's lp(Y) = ((5 + |Y|) / 6)^α (Wu
    et al., 2016; qkv's default), or transformers' |Y|^α (its ``length_penalty``); |Y| counts <eos>, α = 0
    gives 1 in both."""
    return ((5.0 + length) / 6.0) ** alpha if kind == "gnmt" else float(length) ** alpha


def default_max_len(model: EncoderDecoder, src: Tensor, a: float = 2.0, b: int = 10) -> int:
    """Target length limit: a·S + b (default 2·S + 10) for a source of S tokens, within the model's max_len."""
    return max(1, min(int(a * src.size(1) + b), model.cfg.max_len - 1))


@dataclass
class DecodeConfig(ConfigBase):
    """How a run translates unless told otherwise (a section of the run's config, set by its preset):
    beam width (1 = greedy), the length penalty's ``alpha`` and kind (``penalty``: "gnmt", or "transformers"
    to rank and stop exactly as transformers' ``generate`` does), at most ``max_len_a`` · S + ``max_len_b``
    target tokens for a source of S tokens (the paper: beam 4, α 0.6, S + 50), and ``early_stopping``: a
    source's search ends with its first ``beam`` ended hypotheses (fairseq's, CTranslate2's and transformers'
    ``early_stopping=True`` rule) instead of once no live beam can beat them."""

    SECTION: ClassVar[str] = "decode"

    beam: int = 1
    alpha: float = 0.6
    max_len_a: float = 2.0
    max_len_b: int = 10
    penalty: str = "gnmt"
    early_stopping: bool = False

    def __post_init__(self) -> None:
        s = "decode"
        check(self.penalty in PENALTIES, s, "penalty", self.penalty, f"choose {' or '.join(PENALTIES)}")
        check(1 <= self.beam <= MAX_BEAM, s, "beam", self.beam, f"must be from 1 to {MAX_BEAM}")
        alpha_ok = math.isfinite(self.alpha) and self.alpha >= 0
        check(alpha_ok, s, "alpha", self.alpha, "must be a number >= 0 (0 = no length penalty)")
        check(math.isfinite(self.max_len_a) and self.max_len_a >= 0, s, "max_len_a", self.max_len_a, "must be >= 0")
        check(self.max_len_b >= 0, s, "max_len_b", self.max_len_b, "must be >= 0")
        check(self.max_len_a > 0 or self.max_len_b > 0, s, "max_len_b", self.max_len_b, "a or b must be > 0")

    def search(self) -> dict[str, Any]:
        """Beam search's keyword arguments this config sets: ``alpha``, ``penalty``, ``early_stopping``."""
        return {"alpha": self.alpha, "penalty": self.penalty, "early_stopping": self.early_stopping}

    def max_len(self, model: EncoderDecoder, src: Tensor) -> int:
        """The target length limit for the sources ``src`` (B, S)."""
        return default_max_len(model, src, self.max_len_a, self.max_len_b)


def next_log_probs(model: EncoderDecoder, prefix: Tensor, memory: Tensor, src_mask: Tensor, cache: Any) -> Tensor:
    """Log-probabilities (B, V) of the token after ``prefix`` (B, t). With a cache only the last
    token is fed (earlier K/V are cached); without one the whole prefix is recomputed."""
    step_input = prefix[:, -1:] if cache is not None else prefix  # (B, 1) or (B, t)
    logits, _ = model.decode(step_input, memory, src_mask, cache=cache)  # (B, ·, V)
    return torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V)


def check_scores(scores: Tensor) -> None:
    """A one-line QkvError when decoding's scores hold NaN (they then rank nothing: a beam search would end
    with no hypothesis, greedy decoding and sampling would pick arbitrary tokens)."""
    if bool(torch.isnan(scores).any()):
        raise QkvError(
            "the model's scores are NaN: its activations overflow (damaged or diverged weights, or a precision "
            "too narrow for them); try --precision fp32 or an earlier checkpoint"
        )


def _check_max_len(model: EncoderDecoder, max_len: int) -> None:
    if not 1 <= max_len < model.cfg.max_len:
        raise QkvError(f"max length {max_len} must be between 1 and the model's max_len - 1 ({model.cfg.max_len - 1})")


def _keep_rows(
    rows: Tensor, memory: Tensor, src_mask: Tensor, cache: Any, memory_rows: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Decoding goes on with batch rows ``rows`` (B'',): the cache keeps them, and the memory, its mask and
    what the cache computed from them keep rows ``memory_rows`` (default ``rows``; beam search's sources when
    their beams share one memory row)."""
    memory_rows = rows if memory_rows is None else memory_rows
    if cache is not None and rows.numel() > 0:
        cache.reorder(rows, memory_index=memory_rows)
    return memory[memory_rows], src_mask[memory_rows]


@torch.inference_mode()
def greedy(
    model: EncoderDecoder,
    src: Tensor,
    *,
    bos_id: int = 1,
    eos_id: int = 2,
    max_len: int | None = None,
    use_cache: bool = True,
) -> list[Hypothesis]:
    """Greedy decoding of a batch of sources (B, S): the most likely token at each step. Rows that have
    produced <eos> leave the batch (their memory, mask and cache rows with them) once a quarter of the
    rows in it have, so the steps after it cost only the rows still going; until then a finished row is
    fed padding, and its score and tokens stay as they were at its <eos>."""
    max_len = default_max_len(model, src) if max_len is None else max_len
    _check_max_len(model, max_len)
    B, dev, pad = src.size(0), src.device, model.cfg.pad_id
    memory, src_mask, _ = model.encode(src)  # (B, S, d_model), (B, 1, 1, S)
    cache = model.new_cache(max_len + 1) if use_cache else None
    ys = torch.full((B, max_len + 1), pad, dtype=torch.long, device=dev)  # (B, 1 + max_len)
    ys[:, 0] = bos_id
    log_prob = torch.zeros(B, device=dev)
    live = torch.arange(B, device=dev)  # (B',) the rows of ys in the batch
    going = torch.ones(B, dtype=torch.bool, device=dev)  # (B',) which of them have not ended
    t = 0
    while t < max_len and live.numel() > 0:  # once every row has ended, the rule below empties the batch
        lp = next_log_probs(model, ys[live, : t + 1], memory, src_mask, cache)  # (B', V)
        best_lp, tok = lp.max(dim=-1)  # (B',), (B',)
        log_prob[live] += best_lp.masked_fill(~going, 0.0)
        t += 1
        ys[live, t] = tok.masked_fill(~going, pad)
        going &= tok != eos_id
        if 4 * int((~going).sum()) >= going.numel():  # a quarter of the batch has ended: those rows leave
            keep = going.nonzero().flatten()  # (B'',) positions of the rows going on
            live, going = live[keep], going[keep]
            memory, src_mask = _keep_rows(keep, memory, src_mask, cache)
    check_scores(log_prob)  # a NaN at any step stays in its row's sum
    hyps = []
    for b in range(B):
        toks = ys[b, 1 : t + 1].tolist()
        if eos_id in toks:
            toks = toks[: toks.index(eos_id) + 1]
        hyps.append(Hypothesis(toks, float(log_prob[b]), float(log_prob[b])))
    return hyps


def top_candidates(scores: Tensor, lp: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``m`` best continuations of each source's K beams: beam k's score ``scores`` (B', K) plus the
    log-probability ``lp`` (B'*K, V) of a next token. Returns their scores, beams of origin and tokens,
    (B', m) each, best first. Only each beam's own m best tokens can be among them (a beam adds one score
    to all of its tokens), so m·K candidates are ranked instead of K·V."""
    n, K = scores.shape
    per_beam = min(m, lp.size(-1))  # a vocabulary smaller than m: all of it
    beam_lp, beam_tok = lp.topk(per_beam, dim=-1)  # (B'*K, m)
    cand = (scores.reshape(n * K, 1) + beam_lp).view(n, K * per_beam)  # (B', K*m)
    top_scores, idx = cand.topk(m, dim=-1)  # (B', m)
    return top_scores, idx // per_beam, beam_tok.view(n, K * per_beam).gather(1, idx)


@dataclass
class _Beams:
    """The state of beam search over B sources × K beams. Sources still searching are ``live`` (their
    numbers; a source that is done leaves); tensors hold only theirs, in that order: token buffer ys
    (B'*K, 1 + max_len), preallocated, of which ``t + 1`` columns are filled; live scores (B', K). Ended
    hypotheses are kept per source."""

    ys: Tensor
    scores: Tensor
    ended: list[list[Hypothesis]]
    live: list[int]
    t: int = 0

    def end(self, ends: Tensor, rows: Tensor, top_scores: Tensor, eos_id: int, lp: Callable[[int], float]) -> None:
        """Record the candidates marked in ``ends`` (B', 2K), continuing ys rows ``rows`` (B', 2K), as ended."""
        for i in torch.nonzero(ends.any(dim=-1)).flatten().tolist():
            b = self.live[i]
            for j in torch.nonzero(ends[i]).flatten().tolist():
                prefix = self.ys[rows[i, j], 1 : self.t + 1].tolist()
                s = float(top_scores[i, j])
                self.ended[b].append(Hypothesis(prefix + [eos_id], s, s / lp(self.t + 1)))

    def check_done(self, bound: Tensor, K: int, early_stopping: bool = False) -> list[int]:
        """A source is done once it has K ended hypotheses and no live beam can beat the worst of them (with
        ``early_stopping``: once it has K ended hypotheses); returns the positions (in ``live``) of the sources
        still searching."""
        going = []
        for i, b in enumerate(self.live):
            ended = self.ended[b]
            done = len(ended) >= K and (early_stopping or float(bound[i]) <= sorted(h.score for h in ended)[-K])
            if not done:
                going.append(i)
        return going

    def finish(self, K: int, lp: Callable[[int], float]) -> list[list[Hypothesis]]:
        """Beams still alive at max_len end there; each source's K best hypotheses, best first."""
        for i, b in enumerate(self.live):
            for k in range(K):
                s = float(self.scores[i, k])
                if s > float("-inf"):
                    toks = self.ys[i * K + k, 1 : self.t + 1].tolist()
                    self.ended[b].append(Hypothesis(toks, s, s / lp(len(toks))))
        return [sorted(h, key=lambda x: -x.score)[:K] for h in self.ended]


@torch.inference_mode()
def beam_search(
    model: EncoderDecoder,
    src: Tensor,
    *,
    beam: int = 4,
    alpha: float = 0.6,
    bos_id: int = 1,
    eos_id: int = 2,
    max_len: int | None = None,
    use_cache: bool = True,
    penalty: str = "gnmt",
    early_stopping: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of sources (B, S); returns for each source its ``beam`` best
    hypotheses, best first by length-normalised score (``penalty``'s length penalty with ``alpha``).

    A source is finished once it holds ``beam`` ended hypotheses and no live beam can still beat
    the worst of them: with GNMT's penalty the exact bound (log-probabilities only fall, so a live beam
    reaches at most its score / lp(max_len)); with transformers', its heuristic (score / lp(length so
    far), its ``early_stopping=False``), so that both rank and stop as transformers does. With
    ``early_stopping`` a source is finished as soon as it holds ``beam`` ended hypotheses (fewer steps; the
    rule of fairseq, CTranslate2 and transformers' ``early_stopping=True``).
    """
    if penalty not in PENALTIES:
        raise QkvError(f"length penalty {penalty!r}: choose {' or '.join(PENALTIES)}")
    if not 1 <= beam <= MAX_BEAM:
        raise QkvError(f"beam width must be from 1 to {MAX_BEAM} (got {beam}); 4 to 10 is usual")
    if not (math.isfinite(alpha) and alpha >= 0):  # (NaN would rank every ended hypothesis arbitrarily)
        raise QkvError(f"length penalty alpha must be a number >= 0 (got {alpha})")
    max_len = default_max_len(model, src) if max_len is None else max_len
    _check_max_len(model, max_len)
    B, K, dev = src.size(0), beam, src.device

    def norm(length: int) -> float:
        return length_penalty(length, alpha, penalty)

    memory, src_mask, _ = model.encode(src)  # (B, S, d_model), (B, 1, 1, S)
    shared = model.beams_share_memory  # one memory row serves a source's K beams, else it is copied to each
    if not shared:
        memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, d_model)
        src_mask = src_mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
    cache = model.new_cache(max_len + 1) if use_cache else None
    ys = torch.full((B * K, max_len + 1), model.cfg.pad_id, dtype=torch.long, device=dev)  # (B*K, 1 + max_len)
    ys[:, 0] = bos_id
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    state = _Beams(ys, scores, [[] for _ in range(B)], list(range(B)))
    first_k = torch.arange(2 * K, device=dev) < K  # (2K,)
    while state.t < max_len and state.live:
        n = len(state.live)  # B': sources still searching
        base = (torch.arange(n, device=dev) * K)[:, None]  # (B', 1)
        lp = next_log_probs(model, state.ys[:, : state.t + 1], memory, src_mask, cache)  # (B'*K, V)
        top_scores, origin, tok = top_candidates(state.scores, lp, 2 * K)  # (B', 2K): at most K end in <eos>
        check_scores(top_scores)  # (topk ranks NaN first)
        is_eos = tok == eos_id
        # an <eos> candidate ends a hypothesis only if it ranks among the top K (so beam 1 is greedy)
        state.end(is_eos & torch.isfinite(top_scores) & first_k, base + origin, top_scores, eos_id, norm)
        state.scores, pos = top_scores.masked_fill(is_eos, float("-inf")).topk(K, dim=-1)  # (B', K)
        rows = (base + origin.gather(1, pos)).flatten()  # (B'*K,) rows of ys to continue
        state.t += 1
        state.ys = state.ys[rows]
        state.ys[:, state.t] = tok.gather(1, pos).flatten()
        if state.t == max_len:  # the end: the live beams, cut here, compete with the ended hypotheses
            break
        if cache is not None:
            cache.reorder(rows)  # rows stay within their source's beams: what came from the memory stays
        horizon = max_len if penalty == "gnmt" else state.t
        going = state.check_done(state.scores[:, 0] / norm(horizon), K, early_stopping)  # vs. the best live beam
        if len(going) < n:  # done sources leave the batch, with their memory, mask and cache rows
            keep = torch.tensor(going, dtype=torch.long, device=dev)  # (B'',)
            kept_rows = (keep[:, None] * K + torch.arange(K, device=dev)).flatten()  # (B''*K,)
            state.live = [state.live[i] for i in going]
            state.ys, state.scores = state.ys[kept_rows], state.scores[keep]
            memory, src_mask = _keep_rows(kept_rows, memory, src_mask, cache, keep if shared else None)
    return state.finish(K, norm)


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: list[torch.Generator] | None = None,
) -> Tensor:
    """Next tokens (B,) from logits (B, V): greedy when ``temperature`` is 0, else sampled from the
    tempered distribution, cut to the ``top_k`` most likely and to the smallest set with mass ≥ ``top_p``.
    Row b draws its uniform number from ``generators[b]``, so a row's tokens do not depend on the batch."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # mass before this token already reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    if generators is None:
        u = torch.rand(probs.size(0), 1, device="cpu")
    else:
        u = torch.stack([torch.rand(1, generator=g, device=g.device) for g in generators])  # (B, 1)
    u = u.to(cdf.device)  # drawn on the CPU: the same numbers whatever the model's device
    tok = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    return tok.clamp(max=probs.size(-1) - 1)


@torch.inference_mode()
def generate(
    model: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    suppress: list[int] | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) with a decoder-only model, on the KV cache.

    Prompts of different lengths are left-padded; padding is masked out and positions start at each
    prompt's first token, so a prompt gives the same tokens in a batch as alone. Each row samples from
    its own generator seeded with ``seed``. Once the sequence outgrows the model's context, each step
    reads the last ``max_len`` tokens afresh (learned positions cannot slide inside a cache), as nanoGPT
    does. Ids in ``suppress`` are never produced (e.g. special symbols a text model never saw).
    ``on_step`` sees each step's new tokens (B,) as they come. Returns the new tokens of each prompt
    (up to and including ``eos_id``).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise QkvError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise QkvError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    B, L, W = len(prompts), max(len(p) for p in prompts), model.cfg.max_len
    if L > W:
        raise QkvError(f"the prompt has {L} tokens but the model's context is {W}; shorten the prompt")
    model.eval()
    device = next(model.parameters()).device
    seq, key_mask = _left_padded(prompts, pad_id, L + max_new_tokens - 1, device)  # (B, everything ever fed)
    base_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,), device="cpu"))
    generators = [torch.Generator(device="cpu").manual_seed(base_seed) for _ in range(B)]
    cache = model.new_cache(min(W, L + max_new_tokens)) if use_cache else None
    n = L  # columns of seq filled so far
    logits = _next_logits(model, seq[:, :n], key_mask[:, :n], cache, L)  # prefill
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_new_tokens):
        if suppress:
            logits[:, suppress] = float("-inf")
        check_scores(logits)
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generators=generators)  # (B,)
        for b, tok in enumerate(nxt.tolist()):
            if not done[b]:
                out[b].append(tok)
                done[b] = tok == eos_id
        if on_step is not None:
            on_step(nxt)
        if all(done) or t == max_new_tokens - 1:
            break
        seq[:, n], key_mask[:, n] = nxt, True
        n += 1
        if cache is not None and n <= W:
            logits = _next_logits(model, seq[:, :n], key_mask[:, :n], cache, 1)  # one new token on the cache
        else:  # no cache, or past the context: read the last W tokens afresh
            cache, lo = None, max(0, n - W)
            logits = _next_logits(model, seq[:, lo:n], key_mask[:, lo:n], None, n - lo)
    return out


def _left_padded(prompts: list[list[int]], pad_id: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token ids (B, length) and key mask (B, length) with the prompts right-aligned in the first
    max-prompt-length columns (left padding) and room after them for the tokens to come."""
    L = max(len(p) for p in prompts)
    seq = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    key_mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        seq[b, L - len(p) : L] = torch.tensor(p, device=device)
        key_mask[b, L - len(p) : L] = True
    return seq, key_mask


def _next_logits(model: Any, tokens: Tensor, mask: Tensor, cache: DecoderCache | None, new: int) -> Tensor:
    """Logits (B, V) after feeding the last ``new`` columns of ``tokens`` (B, n) (all of them without a
    cache); ``mask`` (B, n) is True at real tokens."""
    visible, pos = None, None  # no padding: every key visible, default positions
    if not bool(mask.all()):
        visible = mask
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)[:, -new:]  # (B, new): 0 at each row's first real token
    logits, _ = model.decode(tokens[:, -new:], key_mask=visible, positions=pos, cache=cache, last_only=True)
    return logits[:, -1]
