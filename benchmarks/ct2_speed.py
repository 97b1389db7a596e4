"""Decoding speed of a translation run in qkv against the same model in CTranslate2 (``qkv export --format
ct2``), side by side in one process: the same sentences, the same batch size, the same threads, float32;
greedy and beam 5, alternating rounds, best of each. Prints sentences/s, the ratio and BLEU of each.

    python benchmarks/ct2_speed.py --run RUN --src test_2016_flickr.de --ref test_2016_flickr.en [--rounds 2] \
        [--int8] [--early-stopping]

``--early-stopping``: qkv's beam search ends a source with its first K ended hypotheses, as CTranslate2's does
(without it, the run's own rule: by default an exact bound, which searches longer).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import torch

import qkv
from qkv.data import read_lines
from qkv.env import summary_line
from qkv.families.translation import bleu_scores
from qkv.interop import export_to_ct2


def ct2_decoder(
    model_dir: Path, run: qkv.api.TranslationRun, threads: int, compute_type: str = "float32"
) -> Callable[[list[str], int], list[str]]:
    """A function translating texts with CTranslate2 (the run's tokenizers; source pieces + </s>)."""
    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", inter_threads=1, intra_threads=threads, compute_type=compute_type
    )
    st, tt = run.src_tokenizer, run.tgt_tokenizer

    def translate(texts: list[str], beam: int) -> list[str]:
        pieces = [[st.id_to_token(i) for i in st.encode(t)] + [st.id_to_token(st.eos_id)] for t in texts]
        limit = max(len(p) for p in pieces) * 2 + 10  # qkv's default limit, 2·S + 10
        out = translator.translate_batch(
            pieces, beam_size=beam, max_batch_size=64, max_decoding_length=limit, min_decoding_length=0
        )
        return [tt.decode([tt.token_id(p) for p in r.hypotheses[0]]) for r in out]

    return translate


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained translation run")
    p.add_argument("--src", required=True, help="source sentences")
    p.add_argument("--ref", required=True, help="references")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--int8", action="store_true", help="int8 weights on both sides")
    p.add_argument("--early-stopping", action="store_true", help="qkv's beam search stops as CTranslate2's does")
    a = p.parse_args()
    threads = torch.get_num_threads()
    kind = "int8" if a.int8 else "float32"
    stop = "qkv early stopping" if a.early_stopping else "qkv stopping as its run says"
    print(f"{summary_line()}; ctranslate2 {ctranslate2.__version__}, {threads} threads each, {kind}, batch 64, {stop}")
    run = qkv.load(a.run, device="cpu", quantize="int8" if a.int8 else "none")
    src, ref = read_lines(a.src), read_lines(a.ref)
    with tempfile.TemporaryDirectory() as tmp:
        ct2 = ct2_decoder(export_to_ct2(run, Path(tmp) / "ct2"), run, threads, kind)
        early = True if a.early_stopping else None

        def ours(texts: list[str], beam: int) -> list[str]:
            return run.translate(texts, beam=beam, early_stopping=early, batch_size=64)  # CTranslate2's batch

        sides = {"qkv": ours, "ctranslate2": ct2}
        for side in sides.values():  # warm-up
            side(src[:64], 5)
        best = {(s, b): 0.0 for s in sides for b in (1, 5)}
        outputs = {}
        for _, beam, (name, side) in itertools.product(range(a.rounds), (1, 5), sides.items()):
            t0 = time.perf_counter()
            outputs[name, beam] = side(src, beam)
            best[name, beam] = max(best[name, beam], len(src) / (time.perf_counter() - t0))
    for beam in (1, 5):
        q, c = best["qkv", beam], best["ctranslate2", beam]
        same = sum(x == y for x, y in zip(outputs["qkv", beam], outputs["ctranslate2", beam], strict=True))
        bleu = {n: bleu_scores(outputs[n, beam], ref)["bleu"] for n in sides}
        print(
            f"beam {beam}: qkv {q:6.1f} sent/s (BLEU {bleu['qkv']:.2f}), CTranslate2 {c:6.1f} sent/s "
            f"(BLEU {bleu['ctranslate2']:.2f}); qkv/CTranslate2 = {q / c:.2f}x; identical outputs {same}/{len(src)}"
        )


if __name__ == "__main__":
    main()
