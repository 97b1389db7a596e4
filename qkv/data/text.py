"""Reading text: one sentence per line, UTF-8, optionally gzip-compressed (recognised by its first bytes,
not its name), and parallel text in three layouts:

* two aligned files, ``SRC`` and ``TGT``, one sentence per line;
* one TSV file, ``source<TAB>target`` per line;
* one JSON Lines file, ``{"src": …, "tgt": …}`` per line (other field names, also nested ones such as
  ``translation.de``, through ``task.src_field`` / ``task.tgt_field``).

A single file is JSON Lines when its first line starts with ``{``, else TSV. Every error names the file
and the line.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import IO, Any

from qkv.errors import QkvError, shown

__all__ = ["ParallelText", "iter_lines", "iter_pairs", "read_lines", "read_parallel", "read_text"]

GZIP_MAGIC = b"\x1f\x8b"


def _open(path: str | Path) -> IO[bytes]:
    """A binary reader of ``path``, decompressing gzip; clear errors for a missing path or a directory."""
    path = Path(path)
    if not path.exists():
        raise QkvError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise QkvError(f"{path} is a directory; give a UTF-8 text file")
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if f.read(2) == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def _bad_gzip(path: str | Path, e: Exception) -> QkvError:
    return QkvError(f"{path} is a damaged gzip file ({e}); download or compress it again")


def _raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes without the line end) of a plain or gzip file."""
    with _open(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                yield number, raw.rstrip(b"\n").rstrip(b"\r")
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise _bad_gzip(path, e) from None


def iter_lines(path: str | Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or gzip) one at a time, without line ends, so that a file of
    any size is read in constant memory; a line that is not UTF-8 is a QkvError naming it."""
    for number, raw in _raw_lines(path):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise QkvError(f"{path}: line {number} is not valid UTF-8 (byte {e.start} of the line)") from None


def read_text(path: str | Path) -> str:
    """The content of a UTF-8 text file (plain or gzip); clear errors for missing, empty or non-UTF-8 files."""
    with _open(path) as f:
        try:
            data = f.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise _bad_gzip(path, e) from None
    if not data.strip():
        raise QkvError(f"{path} is empty; give a UTF-8 text file with some text in it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise QkvError(f"{path}: line {line} is not valid UTF-8 (byte {e.start}); convert the file to UTF-8") from None


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (without line ends); clear errors for missing, empty or non-UTF-8."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def _field(row: Any, name: str) -> Any:
    """``row[name]``, where ``name`` may be a dotted path into nested objects (``translation.de``)."""
    for part in name.split("."):
        if not isinstance(row, dict) or part not in row:
            raise KeyError(name)
        row = row[part]
    return row


def _jsonl_pairs(path: str | Path, fields: tuple[str, str]) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(iter_lines(path), start=1):
        if not line.strip():
            yield "", ""
            continue
        try:
            row = json.loads(line)
            pair = tuple(_field(row, f) for f in fields)
        except json.JSONDecodeError as e:
            raise QkvError(f"{path}: line {number} is not JSON ({e.msg}); JSON Lines has one object per line") from None
        except KeyError as e:
            have = ", ".join(map(shown, row)) if isinstance(row, dict) else "no fields"
            raise QkvError(
                f"{path}: line {number} has no field {shown(e.args[0])} (it has {have}); "
                "set task.src_field / task.tgt_field to the names your file uses"
            ) from None
        if not all(isinstance(x, str) for x in pair):
            raise QkvError(f"{path}: line {number}: the fields {', '.join(fields)} must be strings")
        yield pair  # type: ignore[misc]


def _tsv_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(iter_lines(path), start=1):
        cells = line.split("\t")
        if len(cells) != 2 and line.strip():
            raise QkvError(
                f"{path}: line {number} has {len(cells)} tab-separated fields, not 2: a single parallel file holds "
                "source<TAB>target per line (or JSON Lines); give two files for one sentence per line each"
            )
        yield (cells[0], cells[1]) if len(cells) == 2 else ("", "")


def _first_line(path: str | Path) -> str:
    for line in iter_lines(path):
        return line
    raise QkvError(f"{path} is empty; give a file with some sentence pairs in it")


DEFAULT_FIELDS = ("src", "tgt")


def iter_pairs(
    src: str | Path, tgt: str | Path | None = None, *, fields: tuple[str, str] = DEFAULT_FIELDS
) -> Iterator[tuple[str, str]]:
    """Sentence pairs, in file order, from two aligned files (``tgt`` given) or one TSV or JSON Lines file
    (``tgt`` None); plain or gzip. Pairs are as read (not stripped, empty sides kept). ``fields`` name the
    JSON Lines fields; other field names with another layout are an error, not ignored."""
    jsonl = tgt is None and _first_line(src).lstrip().startswith("{")
    if fields != DEFAULT_FIELDS and not jsonl:
        layout = "two aligned files" if tgt is not None else "a TSV file"
        raise QkvError(
            f"fields {','.join(fields)} name JSON Lines fields, but {src} is {layout}: drop --fields "
            "(task.src_field/tgt_field), or give a JSON Lines file"
        )
    if tgt is None:
        yield from (_jsonl_pairs(src, fields) if jsonl else _tsv_pairs(src))
        return
    counts, text = [0, 0], [False, False]
    for x, y in zip_longest(iter_lines(src), iter_lines(tgt)):
        for k, line in enumerate((x, y)):
            counts[k] += line is not None
            text[k] = text[k] or bool(line and line.strip())
        if x is not None and y is not None:
            yield x, y
    for path, has_text in zip((src, tgt), text, strict=True):
        if not has_text:
            raise QkvError(f"{path} is empty; give a UTF-8 text file with some text in it")
    if counts[0] != counts[1]:
        raise QkvError(
            f"the parallel files have different line counts: {src} has {counts[0]:,} lines, "
            f"{tgt} has {counts[1]:,}; they must be aligned line by line"
        )


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


def read_parallel(
    src: str | Path, tgt: str | Path | None = None, *, fields: tuple[str, str] = ("src", "tgt")
) -> ParallelText:
    """Read parallel text in any layout of :func:`iter_pairs`; pairs with an empty side are dropped and
    counted (never silently)."""
    out = ParallelText([])
    for x, y in iter_pairs(src, tgt, fields=fields):
        x, y = x.strip(), y.strip()
        if not x or not y:
            out.empty += 1
        else:
            out.pairs.append((x, y))
    if not out.pairs:
        where = str(src) if tgt is None else f"{src} / {tgt}"
        raise QkvError(f"no usable sentence pairs in {where} after filtering")
    return out
