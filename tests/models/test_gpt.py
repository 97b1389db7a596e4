"""GPT: causality, the KV cache, batch-invariant generation, config validation."""

from __future__ import annotations

import pytest
import torch

from qkv.decode import generate, sample_next
from qkv.errors import QkvError
from qkv.models.gpt import GPT, GPTConfig


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=40, max_len=48, d_model=32, h=4, N=2)).eval()
    with torch.no_grad():  # a sharper output distribution than at initialisation
        model.tok_embed.weight.mul_(8.0)
    return model


def test_outputs_at_t_ignore_later_tokens():
    model = tiny_gpt()
    x = torch.randint(0, 40, (2, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 40, (2, 4))
    torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])


def test_tied_embeddings_and_presets():
    model = tiny_gpt()
    assert model.lm_head.weight is model.tok_embed.weight
    gpt2 = GPTConfig.from_name("gpt2")
    assert (gpt2.d_model, gpt2.h, gpt2.N, gpt2.max_len, gpt2.hidden) == (768, 12, 12, 1024, 3072)
    with pytest.raises(QkvError, match="model.d_model"):
        GPTConfig(d_model=30, h=4)
    with pytest.raises(QkvError, match="unknown GPT preset"):
        GPTConfig.from_name("gpt5")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_and_uncached_generation_give_identical_tokens(temperature):
    model = tiny_gpt(1)
    prompts = [[3, 4, 5, 6], [7, 8, 9, 10]]
    a = generate(model, prompts, max_new_tokens=20, temperature=temperature, seed=5, use_cache=True)
    b = generate(model, prompts, max_new_tokens=20, temperature=temperature, seed=5, use_cache=False)
    assert a == b and all(len(x) == 20 for x in a)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("new", [15, 60])  # 60: past the context of 48, the window slides
def test_a_batch_of_prompts_gives_each_prompt_its_own_tokens(temperature, new):
    model = tiny_gpt(2)
    prompts = [[5], [6, 7, 8, 9, 10, 11], [12, 13, 14]]
    batch = generate(model, prompts, max_new_tokens=new, temperature=temperature, top_k=20, seed=11)
    alone = [generate(model, [p], max_new_tokens=new, temperature=temperature, top_k=20, seed=11)[0] for p in prompts]
    assert batch == alone and all(len(x) == new for x in batch)


def test_sliding_window_past_the_context_matches_recomputation():
    model = tiny_gpt(4)
    a = generate(model, [[3, 4]], max_new_tokens=70, temperature=0.0)[0]
    b = generate(model, [[3, 4]], max_new_tokens=70, temperature=0.0, use_cache=False)[0]
    assert a == b
    seq = [3, 4] + a
    t = 60  # token t+1 of the sequence is predicted from the 48 tokens before it
    window = torch.tensor([seq[t + 1 - 48 : t + 1]])
    assert int(model(window)[0, -1].argmax()) == seq[t + 1]


def test_generation_stops_at_eos_and_respects_the_context():
    model = tiny_gpt(3)
    first = generate(model, [[5, 6]], max_new_tokens=10, temperature=0)[0]
    stop = first[3]
    out = generate(model, [[5, 6]], max_new_tokens=10, temperature=0, eos_id=stop)[0]
    assert out == first[: first.index(stop) + 1]
    with pytest.raises(QkvError, match="the model's context is 48"):
        generate(model, [[1] * 49], max_new_tokens=10)
    with pytest.raises(QkvError, match="at least one token"):
        generate(model, [[]], max_new_tokens=3)


def test_sampling_filters():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    gens = [torch.Generator().manual_seed(s) for s in range(1)]
    assert int(sample_next(logits, temperature=0)[0]) == 0
    for s in range(50):
        g = [torch.Generator().manual_seed(s)]
        assert int(sample_next(logits, top_k=2, generators=g)[0]) in (0, 1)
        assert int(sample_next(logits, top_p=0.5, generators=g)[0]) == 0  # token 0 alone holds > 50%
    assert gens
