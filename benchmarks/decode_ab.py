"""Decoding speed of this tree's decoders against an earlier revision's, side by side in one process.

Loads ``qkv/decode.py`` and the Transformer's decoder cache (``qkv/layers.py``'s ``DecoderCache`` of
``qkv/attention.py``'s ``KVCache``) as they were at ``--before REV`` (``git show``) beside the current ones,
translates the
same sentences with the same run through each in alternating rounds (greedy and beam 5, best of each), and
prints sentences/s, the ratio, BLEU and how many translations are identical; with ``--profile``, also each
side's share of operator time by family (``op_families.decoding_family``), over one more translation of all.

    python benchmarks/decode_ab.py --before REV --run RUN --src test_2016_flickr.de --ref test_2016_flickr.en \
        [--quantize int8] [--rounds 2] [--profile]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from op_families import decoding_family, family_times, shares  # beside this script
from torch.profiler import profile

import qkv
import qkv.decode
import qkv.families.translation as translation
import qkv.layers
import qkv.models.transformer as transformer
from qkv.data import read_lines
from qkv.env import summary_line
from qkv.families.translation import bleu_scores


def module_at(rev: str, path: str):
    """The file ``path`` (e.g. ``qkv/decode.py``) as it was at git revision ``rev``, imported as a module of its
    own."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "show", f"{rev}:{path}"]
    source = subprocess.run(git, cwd=root, check=True, capture_output=True, text=True).stdout
    name = Path(path).stem + "_before"
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def tolerant(fn: Callable) -> Callable:
    """``fn``, also taking the keyword arguments that came after it, as long as they ask for their default
    (False or None, as ``early_stopping=False``), and dropping them."""
    known = inspect.signature(fn).parameters

    def call(*args: Any, **kwargs: Any) -> Any:
        later = {k: v for k, v in kwargs.items() if k not in known}
        if any(v not in (False, None) for v in later.values()):
            raise SystemExit(f"the revision before has no {', '.join(later)}: compare without it")
        return fn(*args, **{k: v for k, v in kwargs.items() if k in known})

    return call


def decoding_at(rev: str) -> tuple:
    """(greedy, beam_search, the Transformer's DecoderCache) as they were at ``rev``."""
    decode, attention, layers = (module_at(rev, f"qkv/{name}.py") for name in ("decode", "attention", "layers"))
    layers.KVCache = attention.KVCache  # that revision's caches hold that revision's KV caches
    return tolerant(decode.greedy), tolerant(decode.beam_search), layers.DecoderCache


def use(variant: tuple) -> None:
    """Make translation run on a variant's (greedy, beam_search, DecoderCache)."""
    translation.greedy, translation.beam_search, transformer.DecoderCache = variant


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, metavar="REV", help="the git revision to compare against")
    p.add_argument("--run", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--quantize", default="none", choices=("none", "int8"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also: each side's operator time by family")
    a = p.parse_args()
    try:
        before = decoding_at(a.before)
    except subprocess.CalledProcessError as e:
        p.error(f"--before {a.before}: git cannot show the decoding files there ({e.stderr.strip()})")
    variants = {"before": before, "after": (qkv.decode.greedy, qkv.decode.beam_search, qkv.layers.DecoderCache)}
    run = qkv.load(a.run, device="cpu", quantize=a.quantize)
    src, ref = read_lines(a.src), read_lines(a.ref)
    print(f"{summary_line()}; {a.run}, weights {a.quantize if a.quantize != 'none' else 'fp32'}, before = {a.before}")
    for beam in (1, 5):
        best, outputs = {}, {}
        for name in variants:  # warm-up
            use(variants[name])
            run.translate(src[:64], beam=beam)
        for _ in range(a.rounds):
            for name in variants:
                use(variants[name])
                t0 = time.perf_counter()
                outputs[name] = run.translate(src, beam=beam)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        use(variants["after"])
        same = sum(x == y for x, y in zip(outputs["before"], outputs["after"], strict=True))
        bleu = {name: bleu_scores(out, ref)["bleu"] for name, out in outputs.items()}
        print(
            f"beam {beam}: before {len(src) / best['before']:.1f} sentences/s (BLEU {bleu['before']:.2f}), "
            f"after {len(src) / best['after']:.1f} (BLEU {bleu['after']:.2f}) = {best['before'] / best['after']:.2f}x; "
            f"identical translations {same}/{len(src)}"
        )
        for name in variants if a.profile else ():
            use(variants[name])
            with profile() as prof:
                run.translate(src, beam=beam)
            print(f"beam {beam}, {name}: {shares(family_times(prof, decoding_family))}")
        use(variants["after"])


if __name__ == "__main__":
    main()
