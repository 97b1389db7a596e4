"""The ``qkv`` command: a thin layer over :mod:`qkv.train` and :mod:`qkv.api`.

User errors print one line, ``qkv: error: …``, and exit with status 2 — never a traceback. Anything
else is a bug: one line, ``qkv: internal error: …``, exit status 1 (``QKV_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from qkv.devices import PRECISIONS, QUANTIZE, keep_freed_memory
from qkv.errors import QkvError, shown

__all__ = ["main"]

EXAMPLES = {
    "train": """examples:
  qkv train                                   # the default task (dates), into runs/dates-<time>
  qkv train reverse d_model=64 steps=800 --out runs/rev
  qkv train reverse d_model=64 --print-config # the resolved configuration, without training
  qkv train --resume runs/rev steps=1200      # continue, optionally with more steps
  qkv train reverse --family rnn --out runs/rev-gru   # the GRU baseline on the same task""",
    "translate": """examples:
  qkv translate runs/rev "hello"
  echo "the fourth of july nineteen eighty seven" | qkv translate runs/dates --beam 4
  qkv translate runs/dates -i sentences.txt --json > translations.jsonl""",
    "evaluate": """examples:
  qkv evaluate runs/dates --split test
  qkv evaluate runs/m30k --src test.de --ref test.en --beam 5   # scores on stderr, JSON on stdout""",
    "info": """example:
  qkv info runs/dates""",
    "attention": """examples:
  qkv attention runs/dates "the fourth of july nineteen eighty seven" -o cross.png --kind cross --head all
  qkv attention runs/dates "march third two thousand one" -o enc.svg --kind enc --layer 1 --head mean
  echo "march third two thousand one" | qkv attention runs/dates -o maps.json   # every map, as numbers""",
    "generate": """examples:
  qkv generate runs/shakespeare "ROMEO:" --max-new-tokens 300 --temperature 0.8 --seed 1
  qkv generate runs/gpt2 "The Transformer" "Attention is" --temperature 0 --json
  cat prompt.txt | qkv generate runs/shakespeare      # all of stdin is one prompt""",
    "embed": """examples:
  qkv embed runs/minilm "A man is eating food." "A man is riding a horse." --normalize
  cat sentences.txt | qkv embed runs/minilm --normalize > embeddings.jsonl""",
    "convert": """example:
  qkv convert --from-hf path/to/bert-or-gpt2-directory --out runs/imported
  qkv convert --from-hf path/to/opus-mt-de-en --out runs/opus-de-en   # a Marian translation model""",
    "export": """example:
  qkv export runs/shakespeare --out hf/shakespeare   # then transformers' from_pretrained works""",
    "serve": """example:
  qkv serve runs/dates            # then open http://127.0.0.1:8000/""",
    "compare": """examples:
  qkv compare --quick --out runs/compare-quick          # every experiment at toy sizes, <= 10 minutes
  qkv compare --multi30k ../shared/data/multi30k --out runs/compare   # full sizes, translation on Multi30k
  qkv compare --quick --only path_length,query_batch     # some experiments
  qkv compare --only translation --minutes 30 --multi30k ../shared/data/multi30k   # the families at equal time
  qkv compare --only parallelism,query_batch --device cuda   # the timings on a GPU""",
    "average": """examples:
  qkv train multi30k … keep_last=5 save_every=100 --out runs/m30k
  qkv average runs/m30k --last 5 --out runs/m30k-avg5      # then translate/evaluate it as any run""",
    "prepare": """examples:
  qkv prepare --train train.de.gz train.en.gz --valid val.de val.en --test test.de test.en --out data/m30k
  qkv prepare --train pairs.tsv --valid dev.jsonl --vocab-size 37000 --out data/big
  qkv train multi30k --data data/m30k --out runs/m30k   # then train from it, in bounded memory""",
    "env": """examples:
  qkv env            # paste into a bug report
  qkv env --json""",
}
OUTPUT_RULE = (
    "Results go to stdout (text, or JSON / JSON Lines with --json; evaluate, info and embed always print "
    "JSON); progress, notes and errors go to stderr. Options may come before or after positional arguments."
)


class _Parser(argparse.ArgumentParser):
    """argparse with errors in qkv's one-line format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line usage error and exit 2."""
        print(f"qkv: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand; ``qkv --help`` lists each verb's synopsis."""
    from qkv import __version__

    verbs = {name: verb_parser(name) for name in COMMANDS}
    epilog = "commands:\n" + "\n".join(f"  {synopsis(p)}" for p in verbs.values()) + "\n\n" + OUTPUT_RULE
    p = _Parser(
        prog="qkv",
        description="qkv: the Transformer from its parts — train, decode, inspect, compare.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qkv {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here; parsed by verb_parser(name)
    return p


def verb_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one verb (``qkv NAME …``)."""
    _, add_arguments, help_text = COMMANDS[name]
    p = _Parser(
        prog=f"qkv {name}",
        description=f"{help_text[0].upper()}{help_text[1:]}.",
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


def synopsis(p: argparse.ArgumentParser) -> str:
    """One line of a verb's arguments, as the README's CLI table writes it (``qkv translate RUN [TEXT …]
    [-i FILE] [--beam K] …``); hidden options (kept for old spellings) are left out."""
    parts = [p.prog]
    for action in p._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        meta = action.metavar or (action.dest.upper() if not action.choices else "|".join(action.choices))
        metas = list(meta) if isinstance(meta, tuple) else [meta]
        if not action.option_strings:
            optional = action.nargs in ("*", "?") and not metas[0].startswith("[")
            parts.append(f"[{metas[0]}{' …' if action.nargs == '*' else ''}]" if optional else metas[0])
            continue
        flag = action.option_strings[0]
        if action.nargs == "+" and len(metas) == 2:  # one or two values: --train SRC [TGT]
            metas = [metas[0], f"[{metas[1]}]"]
        words = flag if action.nargs == 0 else " ".join([flag, *metas])
        parts.append(words if action.required else f"[{words}]")
    return " ".join(parts)


def _run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory (from qkv train or qkv convert)")


def _model_arguments(p: argparse.ArgumentParser, *, training: bool = False) -> None:
    """``--device``, ``--precision`` and ``--compile``: where and how the model runs (:mod:`qkv.devices`)."""
    sets = " (sets train.{})" if training else ""
    p.add_argument(
        "--device",
        metavar="DEVICE",
        default=None if training else "auto",
        help="auto, cpu, cuda, cuda:N or mps: where the model runs (default auto: a GPU when there is one)"
        + sets.format("device"),
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None if training else "fp32",
        metavar="|".join(PRECISIONS),
        help=("autocast of the forward pass" if training else "the weights' number format (default fp32)")
        + "; auto = bf16 where the hardware has it"
        + sets.format("precision"),
    )
    p.add_argument("--compile", action="store_true", help="run the model under torch.compile" + sets.format("compile"))
    if not training:
        p.add_argument(
            "--quantize",
            choices=QUANTIZE,
            default="none",
            metavar="|".join(QUANTIZE),
            help="int8: every linear map on int8 weights (CPU inference; default none); int8-mixed: outlier input "
            "channels in float32",
        )


def _load(a: argparse.Namespace) -> Any:
    """The run ``a.run``, on the device and in the precision the command line asks for."""
    from qkv import api

    return api.load(a.run, device=a.device, precision=a.precision, compile=a.compile, quantize=a.quantize)


def _json_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON Lines instead of text")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """``qkv train``'s arguments."""
    from qkv.families import FAMILIES
    from qkv.train import RECIPES

    t.add_argument(
        "args",
        nargs="*",
        metavar="[PRESET] [KEY=VALUE …]",
        help=f"a preset ({', '.join(RECIPES)}; default dates) then overrides such as d_model=256 train.steps=500",
    )
    add_parallel_arguments(t)
    t.add_argument("--data", type=Path, metavar="DATA", help="a token store written by qkv prepare (sets task.data)")
    t.add_argument("--text", type=Path, metavar="FILE", help="a text file for a language model (sets task.path)")
    t.add_argument("--valid-text", type=Path, metavar="FILE", help="validation text (default: the last 10%%)")
    t.add_argument("--config", type=Path, metavar="FILE", help="a JSON file with model/train/task sections")
    translation = [f for f in FAMILIES.values() if f.translation]
    t.add_argument(
        "--family",
        choices=[name for f in translation for name in (f.name, *f.aliases)],
        metavar="|".join(f.name for f in translation),
        help="model family for a translation preset (same data, trainer, decoding and metrics): "
        + "; ".join(f"{f.name}: {f.description}" for f in translation),
    )
    t.add_argument("--out", type=Path, metavar="DIR", help="run directory to create (default: runs/PRESET-TIME)")
    t.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN exactly where it stopped")
    t.add_argument(
        "--init", type=Path, metavar="RUN", help="start from RUN's weights, tokenizers and model section (fine-tune)"
    )
    t.add_argument("--until-step", type=int, metavar="N", help="stop (resumably) after step N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar: a plain line every log_every steps")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (sets train.tensorboard)")
    _model_arguments(t, training=True)
    t.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    t.add_argument("--json", action="store_true", help="print the final summary as JSON instead of examples")


def _early_stopping_argument(p: argparse.ArgumentParser) -> None:
    """--early-stopping / --no-early-stopping: beam search's stopping rule."""
    p.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        help="beam search ends a source with its first K ended hypotheses (fewer steps; fairseq's and "
        "CTranslate2's rule), or not (an exact bound) (default: the run's decode.early_stopping)",
    )


def add_translate_arguments(tr: argparse.ArgumentParser) -> None:
    """``qkv translate``'s arguments."""
    _run_argument(tr)
    tr.add_argument("text", nargs="*", metavar="TEXT", help="texts to translate (default: lines of stdin)")
    tr.add_argument("-i", "--input", type=Path, metavar="FILE", help="translate the lines of FILE")
    tr.add_argument("--beam", type=int, metavar="K", help="beam width (1 = greedy; default: the run's decode.beam)")
    tr.add_argument("--alpha", type=float, metavar="A", help="GNMT length penalty (default: the run's decode.alpha)")
    tr.add_argument(
        "--max-len", type=int, metavar="N", help="most target tokens (default: the run's decode.max_len_a·S + _b)"
    )
    tr.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the translations to FILE (default: stdout)"
    )
    tr.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="sentences decoded together (default: 320 / beam width: 320 greedy, 64 at beam 5)",
    )
    _early_stopping_argument(tr)
    _model_arguments(tr)
    _json_argument(tr, '{"source", "translation"}')


def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    """``qkv evaluate``'s arguments."""
    _run_argument(ev)
    ev.add_argument(
        "--split", choices=("test", "valid"), default="test", metavar="test|valid", help="held-out split (default test)"
    )
    ev.add_argument("--src", type=Path, metavar="FILE", help="score the translation of FILE instead of a split")
    ev.add_argument("--ref", type=Path, metavar="FILE", help="references for --src, one per line")
    ev.add_argument("--beam", type=int, metavar="K", help="beam width (1 = greedy; default: the run's decode.beam)")
    ev.add_argument("--alpha", type=float, metavar="A", help="GNMT length penalty (default: the run's decode.alpha)")
    _early_stopping_argument(ev)
    _model_arguments(ev)


def add_attention_arguments(at: argparse.ArgumentParser) -> None:
    """``qkv attention``'s arguments."""
    _run_argument(at)
    at.add_argument("text", nargs="?", metavar="TEXT", help="the input sentence (default: stdin)")
    at.add_argument("-o", "--output", type=Path, metavar="FILE", help="image, JSON or HTML file to write")
    at.add_argument(
        "--kind",
        metavar="enc|dec|cross|self|rollout",
        help="enc, dec or cross for translation models (default cross; the baselines have cross only); self for "
        "GPT/BERT; rollout (Abnar & Zuidema) for an encoder, BERT or GPT",
    )
    at.add_argument("--layer", type=int, metavar="L", help="layer number (default 0; with --stats: every layer)")
    at.add_argument("--head", default="all", metavar="H|mean|all", help="a head number, 'mean', or 'all' (a grid)")
    at.add_argument(
        "--format",
        choices=("png", "svg", "json", "html"),
        metavar="png|svg|json|html",
        help="default: the file's; html = the explorer's page of every map, one self-contained file",
    )
    at.add_argument(
        "--stats",
        action="store_true",
        help="print each head's statistics (entropy, distance, previous/same/next/first/eos weight) as JSON: of "
        "every kind, layer and head, or those --kind, --layer and --head name",
    )
    at.add_argument("--beam", type=int, default=1, metavar="K", help="decode with beam search to draw its translation")
    _model_arguments(at)


def add_generate_arguments(g: argparse.ArgumentParser) -> None:
    """``qkv generate``'s arguments."""
    _run_argument(g)
    g.add_argument("prompts", nargs="*", metavar="PROMPT", help="texts to continue (default: all of stdin, one prompt)")
    g.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a text to continue (repeatable)")
    g.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to add (default 200)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, metavar="K", help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, metavar="P", help="sample among the most likely tokens holding mass P")
    g.add_argument("--seed", type=int, metavar="S", help="random seed (the same seed gives the same text)")
    _model_arguments(g)
    _json_argument(g, '{"prompt", "text"}')


def add_embed_arguments(em: argparse.ArgumentParser) -> None:
    """``qkv embed``'s arguments."""
    _run_argument(em)
    em.add_argument("text", nargs="*", metavar="TEXT", help="texts to embed (default: lines of stdin)")
    em.add_argument("--normalize", action="store_true", help="L2-normalize each embedding")
    _model_arguments(em)


def add_convert_arguments(cv: argparse.ArgumentParser) -> None:
    """``qkv convert``'s arguments."""
    cv.add_argument("--from-hf", type=Path, required=True, metavar="DIR", help="Hugging Face model directory")
    cv.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory to create")


def add_export_arguments(ex: argparse.ArgumentParser) -> None:
    """``qkv export``'s arguments."""
    _run_argument(ex)
    ex.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to create")
    ex.add_argument(
        "--format",
        choices=("hf", "ct2"),
        default="hf",
        metavar="hf|ct2",
        help="hf: Hugging Face (the default); ct2: a CTranslate2 model (translation runs; pip install ctranslate2)",
    )


def add_serve_arguments(sv: argparse.ArgumentParser) -> None:
    """``qkv serve``'s arguments."""
    _run_argument(sv)
    sv.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, metavar="PORT", help="port (default 8000)")
    sv.add_argument(
        "--text", metavar="TEXT", help="the input the page opens with (default: the run's first held-out sentence)"
    )
    _model_arguments(sv)


def add_compare_arguments(cp: argparse.ArgumentParser) -> None:
    """``qkv compare``'s arguments."""
    from qkv.compare import EXPERIMENTS

    cp.add_argument("--quick", action="store_true", help="toy sizes: every experiment in <= 10 minutes on 2 cores")
    cp.add_argument(
        "--sizes", default="full", choices=("full", "quick", "smoke"), metavar="full|quick|smoke", help="sizes preset"
    )
    cp.add_argument(
        "--only", metavar="A,B", help=f"comma-separated experiments (default all): {', '.join(EXPERIMENTS)}"
    )
    cp.add_argument("--multi30k", type=Path, metavar="DIR", help="Multi30k directory for the translation experiment")
    cp.add_argument(
        "--minutes",
        type=float,
        metavar="M",
        help="translation: train each family for M minutes (evaluation excluded) instead of the same steps "
        "(on Multi30k with the multi30k-30min recipe)",
    )
    cp.add_argument(
        "--device",
        metavar="DEVICE",
        default="auto",
        help="auto, cpu, cuda, cuda:N or mps: where the experiments time and train (default auto: a GPU when "
        "there is one); path_length's exact derivatives and scaling's statistics at init run on the CPU",
    )
    cp.add_argument("--out", type=Path, metavar="DIR", help="directory to write (default runs/compare-SIZES-TIME)")


def add_average_arguments(av: argparse.ArgumentParser) -> None:
    """``qkv average``'s arguments."""
    _run_argument(av)
    which = av.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, metavar="K", help="average the last K kept checkpoints (default 5)")
    which.add_argument("--steps", metavar="A,B", help="average the kept checkpoints of these steps")
    av.add_argument("--out", type=Path, required=True, metavar="NEW", help="run directory to create")


def add_parallel_arguments(p: argparse.ArgumentParser, required: tuple[str, ...] = ()) -> None:
    """``--train``, ``--valid``, ``--test``: parallel text as two aligned files or one TSV/JSON Lines file."""
    for split in ("train", "valid", "test"):
        p.add_argument(
            f"--{split}",
            nargs="+",
            required=split in required,
            type=Path,
            metavar=("SRC", "TGT"),
            help=f"{split} pairs: SRC TGT (one sentence per line each) or one TSV or JSON Lines file; .gz is read too",
        )


def add_prepare_arguments(pr: argparse.ArgumentParser) -> None:
    """``qkv prepare``'s arguments."""
    add_parallel_arguments(pr, required=("train", "valid"))
    pr.add_argument("--vocab-size", type=int, metavar="N", help="BPE symbols to learn (default 8000)")
    pr.add_argument("--separate-vocab", action="store_true", help="one BPE per side instead of one joint BPE")
    pr.add_argument("--tokenizer", type=Path, metavar="RUN", help="use a translation run's tokenizers (no BPE learned)")
    pr.add_argument(
        "--fields",
        default="src,tgt",
        metavar="SRC,TGT",
        help="JSON Lines field names (default src,tgt; dotted = nested)",
    )
    pr.add_argument("--out", type=Path, required=True, metavar="DATA", help="store directory to create")
    pr.add_argument("--json", action="store_true", help="print the store's manifest as JSON")


def add_env_arguments(en: argparse.ArgumentParser) -> None:
    """``qkv env``'s arguments."""
    en.add_argument("--json", action="store_true", help="print the environment as one JSON object")


def cmd_train(a: argparse.Namespace) -> int:
    """``qkv train``: train (or resume) and print example translations, the summary, or the config."""
    from qkv import api
    from qkv.train import DEFAULT_RECIPE, resolve_config, train

    positionals_back(a, ("train", "valid", "test"))
    preset, overrides = DEFAULT_RECIPE, list(a.args)
    named = bool(overrides) and "=" not in overrides[0]
    if named:
        preset = overrides.pop(0)
    data = {k: getattr(a, k) for k in DATA_FLAGS}
    if not named and a.config is None:  # the bare form: the data chooses the preset
        preset = "multi30k" if data["train"] or data["data"] else "shakespeare-char" if data["text"] else preset
    family = a.family
    if a.tensorboard:
        overrides.append("train.tensorboard=true")
    for flag in ("device", "precision"):
        if getattr(a, flag) is not None:
            overrides.append(f"train.{flag}={getattr(a, flag)}")
    if a.compile:
        overrides.append("train.compile=true")
    if a.init is not None:
        from qkv.train import recipe

        if a.resume is not None:
            raise QkvError("--resume continues a run from its own weights: drop --init")
        model_fields = [o.split("=", 1)[0] for o in overrides if recipe(preset).section_of(o) == "model"]
        if model_fields:
            raise QkvError(f"--init {a.init} brings its own model section: drop {model_fields[0]}=…")
        overrides.append(f"train.init={a.init}")
    resume = a.resume is not None
    if resume:
        given = [k for k, v in data.items() if v]
        if named:
            raise QkvError("--resume continues a run with its own config: drop the preset (overrides may stay)")
        if a.out is not None:
            raise QkvError("--resume writes into RUN itself: drop --out")
        if family is not None:
            raise QkvError("--resume continues a run with its own model family: drop --family")
        if given:
            raise QkvError(f"--resume continues a run on its own data: drop --{given[0].replace('_', '-')}")
        cfg = None
    else:
        cfg = configured(preset, family, a.config, data, overrides)
        overrides = []
    out = a.resume or a.out or Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if a.print_config:
        print(json.dumps(resolve_config(cfg, out, resume, overrides).to_dict(), indent=2))
        return 0
    progress = not a.no_progress
    summary = train(cfg, out, resume=resume, overrides=overrides, until_step=a.until_step, progress=progress)
    finished = "eval_split" in summary  # absent when stopped early, and on torchrun's other ranks
    if a.json and (finished or summary.get("stopped")):
        print(json.dumps(summary))  # a stopped run says so: {"step": N, "stopped": true}
    elif finished:
        report(api.load(out), summary, out)
    return 0


DATA_FLAGS = ("train", "valid", "test", "data", "text", "valid_text")


def positionals_back(a: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Give back to ``a.args`` what a many-file flag took from the positionals after it: a KEY=VALUE or a
    preset name that is not a file (``qkv train --train pairs.tsv multi30k steps=9``)."""
    from qkv.train import RECIPES

    for flag in flags:
        files = getattr(a, flag)
        while files and not files[-1].exists() and ("=" in str(files[-1]) or str(files[-1]) in RECIPES):
            word = str(files.pop())
            a.args.insert(0, word) if word in RECIPES else a.args.append(word)


def configured(preset: str, family: str | None, config: Path | None, data: dict[str, Any], overrides: list[str]) -> Any:
    """A new run's config: the preset (as ``family``), then a ``--config`` file, then the data flags,
    then KEY=VALUE overrides — each given thing takes effect or is refused."""
    from qkv.train import recipe

    file_overrides = []
    if config is not None:
        file_overrides = config_file_overrides(config)
        family = family or config_file_family(config)
    cfg = recipe(preset) if family is None else recipe(preset).with_family(family)
    cfg = cfg.with_overrides(file_overrides, strict=False).with_data(f"'{preset}'", **data)
    flag = next((k for k in ("train", "valid", "test", "data") if data[k]), None)
    named = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("name", "task.name")]
    if flag and named and named[-1] != "parallel":
        raise QkvError(f"--{flag} gives parallel text, but task.name={named[-1]} asks for another task; drop one")
    return cfg.with_overrides(overrides)


def report(run: Any, summary: dict[str, Any], out: Path) -> None:
    """Print what a finished training run achieved, with examples."""
    split = summary["eval_split"]
    minutes = f"{summary['train_minutes']:.2f} min of training; run directory: {out}"
    if run.config.family == "gpt":
        sample = run.generate("\n", max_new_tokens=200, temperature=0.8, seed=0)[0]
        print(f"sample (temperature 0.8, seed 0):\n{sample}\n")
        print(f"{split} loss {summary[f'{split}_loss']:.4f}, {summary['tokens_per_second']:,.0f} tokens/s, {minutes}")
        return
    if run.config.family == "bert":
        loss, acc = summary[f"{split}_loss"], summary[f"{split}_token_accuracy"]
        print(f"{split} masked-LM loss {loss:.4f}, masked-token accuracy {acc:.4f}, {minutes}")
        return
    print(f"examples ({split} split):")
    for src, ref, hyp in run.examples(split):
        mark = "ok" if hyp == ref else f"expected {ref}"
        print(f"  {src}  ->  {hyp}   [{mark}]")
    if f"{split}_bleu" in summary:
        greedy, d = summary[f"{split}_bleu"], run.config.decode
        score = f"BLEU {greedy:.2f} (greedy)"
        if d.beam > 1:  # also the run's own decoding, the one `qkv evaluate RUN` and `qkv translate RUN` use
            score = f"BLEU {run.evaluate(split)['bleu']:.2f} (beam {d.beam}, alpha {d.alpha:g}; greedy {greedy:.2f})"
    else:
        score = f"exact match {summary['exact_match']:.4f}"
    print(f"{score} on {summary[f'{split}_examples']} held-out examples ({split}), {minutes}")


def config_file_overrides(path: Path) -> list[str]:
    """A JSON config file ({"model": {...}, "train": {...}, "task": {...}}) as KEY=VALUE overrides."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QkvError(f"config file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise QkvError(f"config file {path} must hold a JSON object with model/train/task sections")
    out = []
    for section, fields in data.items():
        if section == "family":
            continue
        if not isinstance(fields, dict):
            raise QkvError(f"config file {path}: section {shown(section)} must be an object of field: value")
        for name, value in fields.items():
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            out.append(f"{section}.{name}={text}")
    return out


def config_file_family(path: Path) -> str | None:
    """The "family" named in a JSON config file, if any."""
    family = json.loads(path.read_text(encoding="utf-8")).get("family")
    if family is not None and not isinstance(family, str):
        raise QkvError(f'config file {path}: "family" must be a string such as "rnn"')
    return family


def _utf8(raw: bytes, where: str) -> str:
    """``raw`` decoded as UTF-8, or a QkvError saying where it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QkvError(f"{where} is not valid UTF-8 (byte {e.start}); convert the input to UTF-8") from None


def _stdin_lines() -> Iterator[str]:
    """The lines of stdin without their ends, split at "\\n" alone and decoded as UTF-8, as files are read
    (:func:`qkv.data.iter_lines`), whatever the locale."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream put in stdin's place (a program calling main)
        yield from (line.rstrip("\n").rstrip("\r") for line in sys.stdin)
        return
    for number, raw in enumerate(buffer, start=1):
        yield _utf8(raw.rstrip(b"\n").rstrip(b"\r"), f"stdin: line {number}")


def _stdin_text() -> str:
    """All of stdin, decoded as UTF-8 whatever the locale."""
    buffer = getattr(sys.stdin, "buffer", None)
    return sys.stdin.read() if buffer is None else _utf8(buffer.read(), "stdin")


def _texts(texts: Sequence[str]) -> list[str]:
    """TEXT arguments, checked to be UTF-8: under a C or non-UTF-8 locale other bytes reach Python as
    surrogates, which no tokenizer takes."""
    for number, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise QkvError(f"TEXT argument {number} is not valid UTF-8; convert it to UTF-8") from None
    return list(texts)


def _some_text(lines: Iterable[str], what: str) -> Iterator[str]:
    """``lines`` unchanged, after checking that one of them is not blank (so that nothing is printed for an
    input with nothing in it)."""
    it, blanks = iter(lines), []
    for line in it:
        blanks.append(line)
        if line.strip():
            yield from blanks
            yield from it
            return
    raise QkvError(f"nothing to {what}: give TEXT arguments, -i FILE or lines on stdin")


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or a file written as ``PATH.partial`` and renamed into place once complete."""
    if path is None:
        yield sys.stdout
        return
    from qkv.checkpoint import check_output_file

    check_output_file(path)
    partial = path.with_name(path.name + ".partial")
    try:
        try:
            f = open(partial, "w", encoding="utf-8")
        except OSError as e:
            raise QkvError(f"cannot write {path}: {e.strerror or e}") from None
        with f:
            yield f
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def cmd_translate(a: argparse.Namespace) -> int:
    """``qkv translate``: one output line per input line (or one JSON line with ``--json``), streamed: a file
    of any length is read and written a chunk at a time."""
    from qkv.data import iter_lines

    run = _load(a)
    _need_translation(run, "translate")
    if a.input is not None:
        lines: Iterable[str] = itertools.chain(_texts(a.text), iter_lines(a.input))
    else:
        lines = _texts(a.text) if a.text else _stdin_lines()
    source, texts = itertools.tee(_some_text(lines, "translate"))
    options = dict(beam=a.beam, alpha=a.alpha, max_len=a.max_len, batch_size=a.batch_size)
    options["early_stopping"] = a.early_stopping
    with _output(a.output) as out:
        for text, line in zip(texts, run.translate_lines(source, **options), strict=True):
            out.write(
                (json.dumps({"source": text, "translation": line}, ensure_ascii=False) if a.json else line) + "\n"
            )
            out.flush() if a.output is None else None
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``qkv evaluate``: metrics as one JSON object on stdout (scores with signatures on stderr for --src)."""

    run = _load(a)
    if not run.config.spec.translation:
        if a.src is not None or a.ref is not None:
            raise QkvError("--src/--ref score translations; this is a language-model run")
        decoding = {"--beam": a.beam, "--alpha": a.alpha, "--early-stopping": a.early_stopping}
        if given := [flag for flag, v in decoding.items() if v is not None]:
            raise QkvError(f"{', '.join(given)}: how translations are decoded; this is a language-model run: drop it")
        print(json.dumps(run.evaluate()))  # language models hold out one split; every token of it scored once
        return 0
    if (a.src is None) != (a.ref is None):
        raise QkvError("give both --src FILE and --ref FILE, or neither (to use the run's test split)")
    if a.src is not None:
        res = run.evaluate_files(a.src, a.ref, beam=a.beam, alpha=a.alpha, early_stopping=a.early_stopping)
        for name, key in (("BLEU", "bleu"), ("BLEU", "bleu_lc"), ("chrF", "chrf")):
            print(f"{name} {res[key]:.2f}  ({res[key + '_signature']})", file=sys.stderr)
        print(json.dumps(res))
        return 0
    print(json.dumps(run.evaluate(a.split, beam=a.beam, alpha=a.alpha, early_stopping=a.early_stopping)))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    """``qkv info``: config, parameter count, last metrics as JSON."""
    from qkv import api

    print(json.dumps(api.load(a.run).info(), indent=2))
    return 0


def cmd_attention(a: argparse.Namespace) -> int:
    """``qkv attention``: write a heatmap (PNG/SVG) or every map as JSON."""
    from qkv.viz import save_attention

    if a.output is None and not a.stats:
        raise QkvError("nothing to write: give -o FILE (png, svg, json or html) and/or --stats")
    if a.output is None and a.format is not None:
        raise QkvError(f"--format {a.format} needs -o FILE to write")
    run = _load(a)
    text = _texts([a.text])[0] if a.text is not None else _stdin_text().strip()
    if not text:
        raise QkvError("nothing to read: give TEXT or a sentence on stdin")
    translation = run.config.spec.translation
    if not translation and a.beam != 1:
        raise QkvError(f"--beam decodes a translation; {run.path} is a {run.config.family} run: drop --beam")
    maps = run.attention(text, beam=a.beam) if translation else run.attention(text)
    kind = a.kind or maps.default_kind
    maps.check(kind, a.layer)
    stats = _chosen_stats(maps, a, kind) if a.stats else None
    path = None
    if a.output is not None:
        path = save_attention(maps, a.output, kind=a.kind, layer=a.layer, head=a.head, fmt=a.format, run=run)
    print(f"{maps.source} -> {maps.output}", file=sys.stderr)
    if path is not None:
        print(f"qkv: wrote {path}", file=sys.stderr)
    if stats is not None:
        print(json.dumps({"source": maps.source, "output": maps.output, "heads": stats}, indent=1))
    return 0


def _chosen_stats(maps: Any, a: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    """The head statistics ``qkv attention --stats`` prints: every head, or those of the ``--kind``,
    ``--layer`` and ``--head`` the user named (``kind`` is --kind or its default, to check a head against)."""
    from qkv.viz.stats import head_stats

    head = None if a.head in ("all", "mean") else a.head
    if a.head == "mean" and a.output is None:
        raise QkvError("--head mean draws the mean of a layer's heads; --stats describes single heads: give --head H")
    if head is not None:
        if not head.isdigit():
            raise QkvError(f"--head must be a head number, 'mean' or 'all' (got {shown(head)})")
        maps.check(kind, a.layer, int(head))
    wanted = {"kind": a.kind, "layer": a.layer, "head": None if head is None else int(head)}
    return [r for r in head_stats(maps) if all(v is None or r[k] == v for k, v in wanted.items())]


def _need(run: Any, family: str, verb: str) -> None:
    if run.config.family != family:
        raise QkvError(f"`qkv {verb}` needs a {family} run; {run.path} is a {run.config.family} run")


def _need_translation(run: Any, verb: str) -> None:
    from qkv.families import TRANSLATION_FAMILIES

    if not run.config.spec.translation:
        wanted = f"translation ({', '.join(TRANSLATION_FAMILIES)})"
        raise QkvError(f"`qkv {verb}` needs a {wanted} run; {run.path} is a {run.config.family} run")


def cmd_generate(a: argparse.Namespace) -> int:
    """``qkv generate``: stream the continuation of one prompt, or print each of several (JSON Lines with
    ``--json``)."""

    run = _load(a)
    _need(run, "gpt", "generate")
    prompts = _texts(list(a.prompts) + list(a.prompt))
    if not prompts:
        prompts = [_stdin_text()]
    opts = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed)
    if len(prompts) == 1 and not a.json:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        run.generate(prompts, on_text=show, **opts)
        sys.stdout.write("\n")
        return 0
    for prompt, text in zip(prompts, run.generate(prompts, **opts), strict=True):
        if a.json:
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False))
        else:
            print(prompt + text)
            print("---")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    """``qkv embed``: one JSON line per text: {"text", "embedding"}."""

    run = _load(a)
    _need(run, "bert", "embed")
    texts = _texts(a.text) if a.text else [line for line in _stdin_lines() if line.strip()]
    if not texts:
        raise QkvError("nothing to embed: give TEXT arguments or lines on stdin")
    for text, vec in zip(texts, run.embed(texts, normalize=a.normalize), strict=True):
        print(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vec]}))
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    """``qkv convert --from-hf``: a run directory of a Hugging Face model."""
    from qkv.interop import convert_from_hf

    out = convert_from_hf(a.from_hf, a.out)
    print(f"qkv: wrote run directory {out}", file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``qkv export RUN --out DIR``: a Hugging Face (or CTranslate2) directory of a run."""
    from qkv.interop import export_to_ct2, export_to_hf

    if a.format == "ct2":
        from qkv import api

        run = api.load(a.run, device="cpu")
        _need_translation(run, "export --format ct2")
        print(f"qkv: wrote CTranslate2 model {export_to_ct2(run, a.out)}", file=sys.stderr)
        return 0
    out = export_to_hf(a.run, a.out)
    print(f"qkv: wrote Hugging Face directory {out}", file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    """``qkv serve``: run the attention explorer until Ctrl-C."""
    from qkv.viz.server import serve

    serve(_load(a), a.host, a.port, example=None if a.text is None else _texts([a.text])[0])
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """``qkv compare``: run the comparison experiments and write report.md, plots and results.json."""
    from qkv.compare import run_comparison

    sizes = "quick" if a.quick else a.sizes
    only = tuple(x.strip() for x in a.only.split(",")) if a.only else None
    out = a.out or Path("runs") / f"compare-{sizes}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_comparison(out, sizes, multi30k=a.multi30k, only=only, minutes=a.minutes, device=a.device)
    return 0


def cmd_average(a: argparse.Namespace) -> int:
    """``qkv average``: a new run with the mean weights of some of a run's checkpoints."""
    from qkv import api

    steps = None
    if a.steps is not None:
        try:
            steps = [int(x) for x in a.steps.split(",") if x.strip()]
        except ValueError:
            raise QkvError(f"--steps {shown(a.steps)}: give step numbers separated by commas, e.g. 2000,2100") from None
    out = api.average(a.run, a.out, last=a.last, steps=steps)
    print(f"qkv: wrote run directory {out}", file=sys.stderr)
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    """``qkv prepare``: tokenize parallel text once into a memory-mapped token store."""
    from qkv import api
    from qkv.data.store import describe

    fields = tuple(f.strip() for f in a.fields.split(","))
    if len(fields) != 2 or not all(fields):
        raise QkvError(f"--fields {shown(a.fields)}: give two field names separated by a comma, e.g. de,en")
    if a.tokenizer is not None and (a.vocab_size is not None or a.separate_vocab):
        raise QkvError("--tokenizer RUN brings its own vocabulary: drop --vocab-size / --separate-vocab")
    say = (lambda msg: print(msg, file=sys.stderr)) if not a.json else None
    store = api.prepare(
        a.out,
        train=a.train,
        valid=a.valid,
        test=a.test,
        vocab_size=8000 if a.vocab_size is None else a.vocab_size,
        joint=not a.separate_vocab,
        tokenizer=a.tokenizer,
        fields=fields,  # type: ignore[arg-type]
        log=say,
    )
    print(json.dumps(store.manifest) if a.json else f"qkv: wrote token store {describe(store)}")
    return 0


def cmd_env(a: argparse.Namespace) -> int:
    """``qkv env``: versions, CPU features, threads and devices, for bug reports."""
    from qkv.env import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if a.json else format_environment(env))
    return 0


# verb -> (what it does, its arguments, its one-line help)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {
    "train": (cmd_train, add_train_arguments, "train a model (default: the built-in dates task)"),
    "translate": (cmd_translate, add_translate_arguments, "translate texts with a run"),
    "evaluate": (
        cmd_evaluate,
        add_evaluate_arguments,
        "loss, token accuracy, exact match, BLEU (language models: over the whole validation text)",
    ),
    "attention": (cmd_attention, add_attention_arguments, "draw attention heatmaps"),
    "generate": (cmd_generate, add_generate_arguments, "continue prompts with a GPT run"),
    "embed": (cmd_embed, add_embed_arguments, "sentence embeddings with a BERT run"),
    "convert": (cmd_convert, add_convert_arguments, "make a run of a Hugging Face GPT-2, BERT or Marian model"),
    "export": (cmd_export, add_export_arguments, "write a GPT, BERT or Transformer run for Hugging Face"),
    "serve": (cmd_serve, add_serve_arguments, "the attention explorer in the browser"),
    "compare": (
        cmd_compare,
        add_compare_arguments,
        "measure Transformer vs RNN vs CNN, scaled vs unscaled, query batch vs per query",
    ),
    "info": (cmd_info, _run_argument, "config, parameters, last metrics"),
    "average": (cmd_average, add_average_arguments, "average the weights of a run's last checkpoints"),
    "prepare": (cmd_prepare, add_prepare_arguments, "tokenize parallel text once into a memory-mapped store"),
    "env": (cmd_env, add_env_arguments, "versions, CPU features, threads and devices, for bug reports"),
}


# Old spellings that still work: (verb, flag) -> the flag's value becomes the first positional, with a note.
OLD_SPELLINGS = {("export", "--to-hf"): "`qkv export --to-hf RUN` is now `qkv export RUN --out DIR`"}


def _respell(argv: list[str]) -> list[str]:
    """``qkv VERB --old-flag VALUE …`` -> ``qkv VERB VALUE …`` for the flags in OLD_SPELLINGS."""
    for (verb, flag), note in OLD_SPELLINGS.items():
        if argv[:1] == [verb] and flag in argv[1:-1]:
            i = argv.index(flag)
            print(f"qkv: note: {note}", file=sys.stderr)
            return [verb, argv[i + 1], *argv[1:i], *argv[i + 2 :]]
    return argv


def parse(argv: list[str]) -> argparse.Namespace:
    """The verb and its arguments; options may come before or after positional arguments, and ``qkv
    train`` takes KEY=VALUE overrides anywhere."""
    argv = _respell(argv)
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # --help, --version, or a one-line error naming the verbs
        raise SystemExit(2)  # (parse_args exits in each of those cases)
    verb = verb_parser(argv[0])
    args, extra = verb.parse_known_intermixed_args(argv[1:])
    if argv[0] == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.args = list(args.args) + extra
    elif extra:
        verb.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command = argv[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qkv`` console script (``argv`` None: this process is the command's own)."""
    if argv is None:
        keep_freed_memory()  # the process's malloc: reuse freed tensors' memory (see qkv.devices)
    args = parse(sys.argv[1:] if argv is None else list(argv))
    try:
        return COMMANDS[args.command][0](args)
    except QkvError as e:
        one_line = " ".join(str(e).splitlines())  # a message quoting odd input still takes one line
        print(f"qkv: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in qkv, not in what the user gave: one line, the traceback on request
        if os.environ.get("QKV_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else ""
        print(
            f"qkv: internal error: {type(e).__name__}: {message[:200]} — run with QKV_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
