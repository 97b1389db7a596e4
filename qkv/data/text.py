"""Reading parallel text: one sentence per line, UTF-8, lines aligned across the two files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qkv.errors import QkvError

__all__ = ["ParallelText", "iter_lines", "read_lines", "read_parallel", "read_text"]


def read_text(path: str | Path) -> str:
    """The content of a UTF-8 text file; clear errors for missing, empty or non-UTF-8 files."""
    path = Path(path)
    if not path.exists():
        raise QkvError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise QkvError(f"{path} is a directory; give a UTF-8 text file")
    data = path.read_bytes()
    if not data.strip():
        raise QkvError(f"{path} is empty; give a UTF-8 text file with some text in it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise QkvError(f"{path}: line {line} is not valid UTF-8 (byte {e.start}); convert the file to UTF-8") from None
    return text


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (without line ends); clear errors for missing, empty or non-UTF-8."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def iter_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file one at a time (without line ends), so that a file of any size is
    read in constant memory; a line that is not UTF-8 is a QkvError naming it."""
    path = Path(path)
    if not path.exists():
        raise QkvError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise QkvError(f"{path} is a directory; give a UTF-8 text file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as e:
                raise QkvError(f"{path}: line {number} is not valid UTF-8 (byte {e.start} of the line)") from None


@dataclass
class ParallelText:
    """Aligned sentence pairs, with how many pairs were filtered out and why (``too_long`` is set by
    whoever applies a length limit after tokenization)."""

    pairs: list[tuple[str, str]]
    empty: int = 0
    too_long: int = 0

    def report(self, name: str) -> str:
        """A one-line account of what was kept and filtered."""
        return (
            f"{name}: {len(self.pairs):,} pairs"
            f" ({self.empty:,} with an empty side and {self.too_long:,} over the length limit filtered out)"
        )


def read_parallel(src: str | Path, tgt: str | Path) -> ParallelText:
    """Read aligned files; pairs with an empty side are dropped and counted (never silently)."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise QkvError(
            f"the parallel files have different line counts: {src} has {len(a):,} lines, {tgt} has {len(b):,}; "
            "they must be aligned line by line"
        )
    out = ParallelText([])
    for x, y in zip(a, b, strict=True):
        x, y = x.strip(), y.strip()
        if not x or not y:
            out.empty += 1
        else:
            out.pairs.append((x, y))
    if not out.pairs:
        raise QkvError(f"no usable sentence pairs in {src} / {tgt} after filtering")
    return out
