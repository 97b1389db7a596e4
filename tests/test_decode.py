"""Decoding: the KV cache changes nothing, beam 1 is greedy, beams are sorted and beat greedy."""

from __future__ import annotations

import pytest
import torch

from qkv.decode import beam_search, greedy, length_penalty, top_candidates
from qkv.errors import QkvError
from qkv.models import TransformerConfig, build_transformer


def make_model(seed: int, norm_first: bool = False):
    """A random model whose <eos> logit is boosted so that some hypotheses end early."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32,
        h=4,
        N=2,
        d_ff=64,
        dropout=0.0,
        max_len=40,
        norm_first=norm_first,
        src_vocab_size=12,
        tgt_vocab_size=10,
        share_embeddings="none",
    )
    model = build_transformer(cfg).eval()
    with torch.no_grad():
        model.generator.weight.mul_(3.0)
        model.generator.weight[2].mul_(4 / 3)
    src = torch.randint(4, 12, (4, 7))
    src[1, 5:] = 0
    src[3, 3:] = 0
    return model, src


@pytest.fixture
def trained(tiny_run):
    """A partly trained reverse model and a batch of held-out sources."""
    import qkv
    from qkv.data import encode_source, get_task

    run = qkv.load(tiny_run)
    texts = [s for s, _ in get_task(run.config.task).split("test")[:12]]
    return run.model, encode_source(texts, run.src_tokenizer)


@pytest.mark.parametrize("which", [0, 1, 2, "trained"])
def test_cached_and_uncached_greedy_give_identical_tokens(which, request):
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which, norm_first=which == 2)
    a = greedy(model, src, max_len=20, use_cache=True)
    b = greedy(model, src, max_len=20, use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x.log_prob - y.log_prob) < 1e-4


@pytest.mark.parametrize("which", [0, 1, "trained"])
def test_cached_and_uncached_beam_give_identical_tokens(which, request):
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    a = beam_search(model, src, beam=3, max_len=15, use_cache=True)
    b = beam_search(model, src, beam=3, max_len=15, use_cache=False)
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]


@pytest.mark.parametrize("which", [0, 1, 2, 3, "trained"])
def test_beam_one_equals_greedy(which, request):
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    g = greedy(model, src, max_len=20)
    b = beam_search(model, src, beam=1, alpha=0.0, max_len=20)
    assert [h.tokens for h in g] == [hs[0].tokens for hs in b]


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4, "trained"])
def test_beams_sorted_and_best_model_score_at_least_greedy(which, request):
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    g = greedy(model, src, max_len=20)
    beams = beam_search(model, src, beam=5, alpha=0.0, max_len=20)
    for hs, gh in zip(beams, g, strict=True):
        scores = [h.score for h in hs]
        assert scores == sorted(scores, reverse=True)
        assert len(hs) == 5
        assert hs[0].log_prob >= gh.log_prob - 1e-5
        assert all(h.tokens[-1] == 2 or len(h.tokens) == 20 for h in hs)
    with_penalty = beam_search(model, src, beam=4, alpha=0.6, max_len=20)
    for hs in with_penalty:
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
        for h in hs:
            assert abs(h.score - h.log_prob / length_penalty(len(h.tokens), 0.6)) < 1e-4


def test_hypothesis_log_prob_is_the_model_score():
    model, src = make_model(5)
    hyp = greedy(model, src[:1], max_len=10)[0]
    tgt = torch.tensor([[1] + hyp.tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(src[:1], tgt[:, :-1]), -1)
    total = logp[0, torch.arange(len(hyp.tokens)), torch.tensor(hyp.tokens)].sum()
    assert abs(total.item() - hyp.log_prob) < 1e-4


def test_bad_decoding_arguments():
    model, src = make_model(0)
    with pytest.raises(QkvError, match="beam width"):
        beam_search(model, src, beam=0)
    with pytest.raises(QkvError, match="max length"):
        greedy(model, src, max_len=500)


def test_decoders_preallocate_the_cache_to_the_longest_target():
    model, src = make_model(7)
    asked = []
    new_cache = model.new_cache
    model.new_cache = lambda capacity=None: asked.append(capacity) or new_cache(capacity)
    greedy(model, src, max_len=12)
    beam_search(model, src, beam=3, max_len=12)
    assert asked == [13, 13]  # <bos> + 12 tokens: the caches are never reallocated


def test_greedy_rows_leave_in_groups_of_a_quarter(trained, monkeypatch):
    """A finished greedy row stays in the batch (fed padding) until a quarter of the batch has finished, then
    those rows leave together: every step holds every row still going, and fewer finished rows than a quarter."""
    model, src = trained
    rows = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda tgt, *a, **k: rows.append(tgt.size(0)) or real(tgt, *a, **k))
    lengths = [len(h.tokens) for h in greedy(model, src, max_len=20)]  # a row decodes steps 0..length-1
    for step, n in enumerate(rows):
        going = sum(length > step for length in lengths)
        assert going <= n and 4 * (n - going) < n, (step, n, going)
    assert len(set(rows)) < len(set(lengths))  # fewer compactions than distinct end steps


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("which", [0, 1, "trained"])
def test_finished_sources_leave_the_batch_and_change_nothing(which, beam, request, monkeypatch):
    """Rows that are done stop being decoded (the batch shrinks), and each source's result equals decoding it
    alone."""
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    rows = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda tgt, *a, **k: rows.append(tgt.size(0)) or real(tgt, *a, **k))

    def run(s: torch.Tensor) -> list[list[int]]:
        if beam == 1:
            return [h.tokens for h in greedy(model, s, max_len=20)]
        return [h[0].tokens for h in beam_search(model, s, beam=beam, max_len=20)]

    together = run(src)
    steps = list(rows)
    assert steps == sorted(steps, reverse=True)  # rows only leave
    if which == "trained":  # its translations end at different lengths: the batch shrinks
        assert steps[-1] < steps[0]
    alone = [run(src[i : i + 1])[0] for i in range(src.size(0))]
    assert together == alone


@pytest.mark.parametrize(("B", "K", "V"), [(3, 4, 50), (2, 5, 8), (1, 3, 4), (2, 2, 2)])
def test_top_candidates_equal_ranking_every_continuation_of_every_beam(B, K, V):
    g = torch.Generator().manual_seed(B * 100 + K * 10 + V)
    scores = torch.randn(B, K, generator=g)
    scores[0, 1:] = float("-inf")  # beam search's first step: only the first beam is live
    lp = torch.log_softmax(torch.randn(B * K, V, generator=g) * 3, dim=-1)
    full_scores, full_idx = (scores[:, :, None] + lp.view(B, K, V)).view(B, K * V).topk(2 * K, dim=-1)
    top_scores, origin, tok = top_candidates(scores, lp, 2 * K)
    assert torch.equal(top_scores, full_scores)
    finite = torch.isfinite(full_scores)  # among -inf candidates the order is arbitrary
    assert torch.equal(origin[finite], (full_idx // V)[finite]) and torch.equal(tok[finite], (full_idx % V)[finite])


@pytest.mark.parametrize("which", [0, 1, "trained"])
def test_beams_sharing_their_source_memory_equal_beams_with_a_copy_each(which, request, monkeypatch):
    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    assert model.beams_share_memory
    shared = beam_search(model, src, beam=4, max_len=15)
    monkeypatch.setattr(model, "beams_share_memory", False)  # memory repeated K times, as other families
    copied = beam_search(model, src, beam=4, max_len=15)
    assert [[h.tokens for h in hs] for hs in shared] == [[h.tokens for h in hs] for hs in copied]
    for hs, cs in zip(shared, copied, strict=True):
        assert all(abs(h.score - c.score) < 1e-5 for h, c in zip(hs, cs, strict=True))


@pytest.mark.parametrize("which", [4, 5, "trained"])  # models whose sources end K hypotheses before max_len
def test_early_stopping_ends_a_source_once_k_hypotheses_have_ended(which, request, monkeypatch):
    from qkv.decode import _Beams

    model, src = request.getfixturevalue("trained") if which == "trained" else make_model(which)
    if which != "trained":
        with torch.no_grad():
            model.generator.weight[2].mul_(1.5)  # <eos> likelier still
    exact = beam_search(model, src, beam=3, max_len=20)
    checks: list[tuple[bool, bool]] = []  # per live source and step: (K ended, found done)
    check = _Beams.check_done

    def spy(self, bound, K, early_stopping=False):
        going = check(self, bound, K, early_stopping)
        checks.extend((len(self.ended[b]) >= K, i not in going) for i, b in enumerate(self.live))
        return going

    monkeypatch.setattr(_Beams, "check_done", spy)
    early = beam_search(model, src, beam=3, max_len=20, early_stopping=True)
    assert any(done for _, done in checks) and all(k_ended == done for k_ended, done in checks)
    for e, x in zip(early, exact, strict=True):
        assert len(e) == 3 and [h.score for h in e] == sorted((h.score for h in e), reverse=True)
        assert e[0].score <= x[0].score + 1e-6  # the exact search never finds worse


@pytest.mark.parametrize("how", ["greedy", "beam", "sample"])
def test_nan_scores_are_one_line_not_an_empty_beam_or_arbitrary_tokens(how):
    """A model whose activations overflow (a huge weight: a damaged file, or fp16) gives NaN scores. Beam search
    used to end with no hypothesis (an IndexError); greedy decoding and sampling picked arbitrary tokens."""
    from qkv.decode import generate
    from qkv.models import GPT, GPTConfig

    if how == "sample":
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=11, max_len=16, d_model=16, h=2, N=1, dropout=0.0)).eval()
        decode = lambda: generate(model, [[1, 2, 3]], max_new_tokens=4, seed=0)  # noqa: E731
    else:
        model, src = make_model(0)
        search = greedy if how == "greedy" else lambda m, s: beam_search(m, s, beam=3)
        decode = lambda: search(model, src)  # noqa: E731
    decode()  # finite weights: no error
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("w_1.weight"))[0].fill_(1e38)
    with pytest.raises(QkvError, match="scores are NaN"):
        decode()


def test_weights_holding_nan_or_inf_are_refused_at_load():
    from qkv.checkpoint import load_weights

    model, _ = make_model(0)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(model, tensors, "ok")
    tensors["generator.weight"][3, 1] = float("inf")
    with pytest.raises(QkvError, match=r"x\.safetensors: generator\.weight holds NaN or infinite values"):
        load_weights(model, tensors, "x.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_a_length_penalty_that_is_not_a_number_at_least_0_is_refused(bad):
    """alpha NaN passed the old check (NaN < 0 is false) and ranked every ended hypothesis arbitrarily."""
    from qkv.decode import DecodeConfig

    model, src = make_model(0)
    with pytest.raises(QkvError, match="alpha must be a number >= 0"):
        beam_search(model, src, beam=2, alpha=bad)
    with pytest.raises(QkvError, match="alpha"):
        DecodeConfig(beam=2, alpha=bad)


def test_a_temperature_that_is_not_a_number_at_least_0_is_refused(family_runs):
    import qkv

    run = qkv.load(family_runs["gpt"])
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(QkvError, match="temperature must be a number >= 0"):
            run.generate("To", max_new_tokens=2, temperature=bad)
