"""The ``qkv`` command: a thin layer over :mod:`qkv.train` and :mod:`qkv.api`.

User errors print one line, ``qkv: error: …``, and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qkv.errors import QkvError

__all__ = ["main"]

EXAMPLES = {
    "train": """examples:
  qkv train                                   # the default task (dates), into runs/dates-<time>
  qkv train reverse d_model=64 steps=800 --out runs/rev
  qkv train --resume runs/rev steps=1200      # continue, optionally with more steps""",
    "translate": """examples:
  qkv translate runs/rev "hello"
  echo "the fourth of july nineteen eighty seven" | qkv translate runs/dates --beam 4""",
    "evaluate": """example:
  qkv evaluate runs/dates --split test""",
    "info": """example:
  qkv info runs/dates""",
}


class _Parser(argparse.ArgumentParser):
    """argparse with errors in qkv's one-line format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line usage error and exit 2."""
        print(f"qkv: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from qkv.train import RECIPES

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="qkv", description="qkv: the Transformer from its parts — train, decode, inspect.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train", help="train a model (default: the built-in dates task)", epilog=EXAMPLES["train"], formatter_class=fmt
    )
    t.add_argument(
        "args",
        nargs="*",
        metavar="[PRESET] [KEY=VALUE ...]",
        help=f"a preset ({', '.join(RECIPES)}; default dates) then overrides such as d_model=256 train.steps=500",
    )
    t.add_argument("--out", type=Path, help="run directory to create (default: runs/PRESET-TIME)")
    t.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN exactly where it stopped")
    t.add_argument("--until-step", type=int, metavar="N", help="stop (resumably) after step N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    tr = sub.add_parser(
        "translate", help="translate texts with a run", epilog=EXAMPLES["translate"], formatter_class=fmt
    )
    tr.add_argument("run", type=Path, metavar="RUN")
    tr.add_argument("text", nargs="*", metavar="TEXT", help="texts to translate (default: lines of stdin)")
    tr.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy, the default)")
    tr.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty for beam search (default 0.6)")
    tr.add_argument("--max-len", type=int, help="most target tokens (default 2·source + 10)")

    ev = sub.add_parser(
        "evaluate", help="loss, token accuracy, exact match", epilog=EXAMPLES["evaluate"], formatter_class=fmt
    )
    ev.add_argument("run", type=Path, metavar="RUN")
    ev.add_argument("--split", choices=("valid", "test"), default="test")

    info = sub.add_parser("info", help="config, parameters, last metrics", epilog=EXAMPLES["info"], formatter_class=fmt)
    info.add_argument("run", type=Path, metavar="RUN")
    return p


def cmd_train(a: argparse.Namespace) -> int:
    """``qkv train``: train (or resume) and print example translations."""
    from qkv import api
    from qkv.train import DEFAULT_RECIPE, recipe, train

    preset, overrides = DEFAULT_RECIPE, list(a.args)
    if overrides and "=" not in overrides[0]:
        preset = overrides.pop(0)
    if a.resume is not None:
        if a.args and "=" not in a.args[0]:
            raise QkvError("--resume continues a run with its own config: drop the preset (overrides may stay)")
        if a.out is not None:
            raise QkvError("--resume writes into RUN itself: drop --out")
        out = a.resume
        summary = train(out=out, resume=True, overrides=overrides, until_step=a.until_step, progress=not a.no_progress)
    else:
        cfg = recipe(preset)
        out = a.out or Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = train(cfg, out, overrides=overrides, until_step=a.until_step, progress=not a.no_progress)
    if summary.get("stopped"):
        return 0
    run = api.load(out)
    from qkv.data import get_task

    examples = get_task(run.config.task).split("test")[:5]
    print("examples (held-out test split):")
    for (src, ref), hyp in zip(examples, run.translate([s for s, _ in examples]), strict=True):
        mark = "ok" if hyp == ref else f"expected {ref}"
        print(f"  {src}  ->  {hyp}   [{mark}]")
    print(
        f"exact match {summary['exact_match']:.4f} on {summary['test_examples']} held-out examples, "
        f"{summary['train_minutes']:.2f} min; run directory: {out}"
    )
    return 0


def cmd_translate(a: argparse.Namespace) -> int:
    """``qkv translate``: one output line per input text."""
    from qkv import api

    run = api.load(a.run)
    texts = a.text if a.text else [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise QkvError("nothing to translate: give TEXT arguments or lines on stdin")
    for line in run.translate(texts, beam=a.beam, alpha=a.alpha, max_len=a.max_len):
        print(line)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``qkv evaluate``: metrics as one JSON object."""
    from qkv import api

    print(json.dumps(api.load(a.run).evaluate(a.split)))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    """``qkv info``: config, parameter count, last metrics as JSON."""
    from qkv import api

    print(json.dumps(api.load(a.run).info(), indent=2))
    return 0


COMMANDS = {"train": cmd_train, "translate": cmd_translate, "evaluate": cmd_evaluate, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qkv`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except QkvError as e:
        print(f"qkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
