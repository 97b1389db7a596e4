"""Built-in synthetic sequence-to-sequence tasks, generated on the fly from a seed (no downloads).

* ``copy``, ``reverse``, ``sort``: strings of letters -> the same, reversed, sorted (character level).
* ``dates`` (the default): spelled-out English dates -> ISO dates, e.g.
  "fourth of july nineteen eighty seven" -> "1987-07-04". A translation-like task: different source
  (words) and target (characters) vocabularies, and reordering (the year comes last in the source and
  first in the target; day and month swap by format).

Held-out examples are truly unseen: an example belongs to the test split when a hash of its source
falls in ``test_percent`` of the hash space, and training never samples those.
"""

from __future__ import annotations

import calendar
import random
import zlib
from dataclasses import dataclass
from typing import ClassVar

from qkv.config import ConfigBase, check
from qkv.data.vocab import Vocab
from qkv.errors import QkvError, shown

__all__ = ["TASKS", "Task", "TaskConfig", "get_task"]

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class TaskConfig(ConfigBase):
    """What to train on: a built-in task (``dates``, ``copy``, ``reverse``, ``sort``) generated on the
    fly, or ``parallel`` text tokenized with BPE (``vocab_size``; one joint vocabulary or one per side):
    files (``train_src``/``train_tgt``, ``valid_*``, optional ``test_*``; a ``*_tgt`` left empty means
    ``*_src`` is one TSV or JSON Lines file, whose fields ``src_field``/``tgt_field`` name) or a token
    store made by ``qkv prepare`` (``data``).

    ``max_len`` is the longest string for the letter tasks, and the most subword tokens per side for
    parallel text (longer training pairs are filtered out, and counted). Each task reads only some
    fields (:meth:`reads`); setting another one is an error, not silently ignored.
    """

    SECTION: ClassVar[str] = "task"

    name: str = "dates"
    min_len: int = 1
    max_len: int = 16
    test_size: int = 1000
    valid_size: int = 500
    test_percent: float = 2.0
    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    test_src: str | None = None
    test_tgt: str | None = None
    src_field: str = "src"
    tgt_field: str = "tgt"
    data: str | None = None
    vocab_size: int = 8000
    joint_vocab: bool = True

    def __post_init__(self) -> None:
        names = (*TASKS, "parallel")
        check(self.name in names, "task", "name", self.name, f"choose one of {', '.join(names)}")
        check(self.min_len >= 1, "task", "min_len", self.min_len, "must be >= 1")
        check(self.max_len >= self.min_len, "task", "max_len", self.max_len, "must be >= task.min_len")
        check(self.test_size >= 1, "task", "test_size", self.test_size, "must be >= 1")
        check(self.valid_size >= 1, "task", "valid_size", self.valid_size, "must be >= 1")
        check(0 < self.test_percent < 50, "task", "test_percent", self.test_percent, "must be in (0, 50)")
        check(self.vocab_size >= 16, "task", "vocab_size", self.vocab_size, "must be >= 16")
        if self.name == "parallel":
            for split in ("train", "valid", "test"):
                src, tgt = getattr(self, f"{split}_src"), getattr(self, f"{split}_tgt")
                check(src is not None or tgt is None, "task", f"{split}_tgt", tgt, f"needs task.{split}_src as well")
            files = self.train_src or self.valid_src or self.test_src
            check(self.data is None or not files, "task", "data", self.data, "give a prepared store or files, not both")
        else:
            check(self.max_len <= 64, "task", "max_len", self.max_len, "must be <= 64 for the built-in tasks")

    def reads(self) -> tuple[str, ...]:
        """The fields the chosen task reads (the others do nothing for it). A prepared store brings its
        own tokenizers and tokens: then only ``data``, ``max_len`` and ``name`` act."""
        if self.name != "parallel":
            return TASKS[self.name].reads
        return ("name", "max_len", "data") if self.data is not None else PARALLEL_FIELDS

    @property
    def files(self) -> dict[str, tuple[str, str | None]]:
        """The parallel files given, by split: (source, target) or (one TSV/JSON Lines file, None)."""
        out = {}
        for split in ("train", "valid", "test"):
            src = getattr(self, f"{split}_src")
            if src is not None:
                out[split] = (src, getattr(self, f"{split}_tgt"))
        return out


PARALLEL_FIELDS = tuple(f"{split}_{side}" for split in ("train", "valid", "test") for side in ("src", "tgt")) + (
    "name",
    "max_len",
    "src_field",
    "tgt_field",
    "data",
    "vocab_size",
    "joint_vocab",
)


class Task:
    """A generator of (source, target) text pairs with fixed vocabularies."""

    name = "task"
    src_level = "char"
    tgt_level = "char"
    reads: ClassVar[tuple[str, ...]] = ("name", "test_size", "valid_size", "test_percent")

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One (source, target) pair, from any split."""
        raise NotImplementedError

    def src_symbols(self) -> list[str]:
        """Every source symbol."""
        raise NotImplementedError

    def tgt_symbols(self) -> list[str]:
        """Every target symbol."""
        return self.src_symbols()

    def vocabs(self) -> tuple[Vocab, Vocab]:
        """Source and target vocabularies."""
        return Vocab(self.src_symbols(), self.src_level), Vocab(self.tgt_symbols(), self.tgt_level)

    def is_test(self, src: str) -> bool:
        """Whether ``src`` belongs to the held-out part (valid and test splits)."""
        return zlib.crc32(src.encode()) % 10_000 < self.cfg.test_percent * 100

    def train_pair(self, rng: random.Random) -> tuple[str, str]:
        """A training pair: never one from the held-out part."""
        while True:
            src, tgt = self.sample(rng)
            if not self.is_test(src):
                return src, tgt

    def split(self, name: str) -> list[tuple[str, str]]:
        """The fixed ``valid`` or ``test`` split: distinct held-out pairs from a seed of their own."""
        if name not in ("valid", "test"):
            raise QkvError(f"unknown split {shown(name)}: choose valid or test")
        size = self.cfg.valid_size if name == "valid" else self.cfg.test_size
        salt = 1 if name == "valid" else 2
        rng = random.Random(f"{self.name}-{salt}")
        seen: set[str] = set()
        pairs: list[tuple[str, str]] = []
        tries = 0
        while len(pairs) < size and tries < 2000 * size:
            tries += 1
            src, tgt = self.sample(rng)
            # valid and test take disjoint halves of the held-out part
            if self.is_test(src) and src not in seen and (zlib.crc32(src.encode(), 7) % 2 == salt - 1):
                seen.add(src)
                pairs.append((src, tgt))
        return pairs


class _LetterTask(Task):
    reads = (*Task.reads, "min_len", "max_len")

    def src_symbols(self) -> list[str]:
        return list(LETTERS)

    def _letters(self, rng: random.Random) -> str:
        n = rng.randint(self.cfg.min_len, self.cfg.max_len)
        return "".join(rng.choice(LETTERS) for _ in range(n))


class CopyTask(_LetterTask):
    """abc -> abc."""

    name = "copy"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One pair."""
        s = self._letters(rng)
        return s, s


class ReverseTask(_LetterTask):
    """abc -> cba."""

    name = "reverse"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One pair."""
        s = self._letters(rng)
        return s, s[::-1]


class SortTask(_LetterTask):
    """cab -> abc."""

    name = "sort"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One pair."""
        s = self._letters(rng)
        return s, "".join(sorted(s))


ONES = "one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINAL_ONES = "first second third fourth fifth sixth seventh eighth ninth".split()
ORDINAL_TEENS = (
    "tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split()
)
MONTHS = [calendar.month_name[m].lower() for m in range(1, 13)]


def number_words(n: int) -> list[str]:
    """1..99 in words: 42 -> ['forty', 'two']."""
    if n < 10:
        return [ONES[n - 1]]
    if n < 20:
        return [TEENS[n - 10]]
    tens, ones = divmod(n, 10)
    return [TENS[tens - 2]] + ([ONES[ones - 1]] if ones else [])


def ordinal_words(n: int) -> list[str]:
    """1..31 as an ordinal: 21 -> ['twenty', 'first'], 30 -> ['thirtieth']."""
    if n < 10:
        return [ORDINAL_ONES[n - 1]]
    if n < 20:
        return [ORDINAL_TEENS[n - 10]]
    tens, ones = divmod(n, 10)
    if ones == 0:
        return [TENS[tens - 2][:-1] + "ieth"]
    return [TENS[tens - 2], ORDINAL_ONES[ones - 1]]


def year_words(year: int, rng: random.Random) -> list[str]:
    """1900..2099 as spoken: 1987 'nineteen eighty seven', 1905 'nineteen oh five', 2023 'twenty twenty
    three' or 'two thousand twenty three', 2000 'two thousand'."""
    century, rest = divmod(year, 100)
    if century == 20 and (rest < 10 or rng.random() < 0.5):
        return ["two", "thousand"] + (number_words(rest) if rest else [])
    head = number_words(century)
    if rest == 0:
        return head + ["hundred"]
    if rest < 10:
        return head + ["oh"] + number_words(rest)
    return head + number_words(rest)


class DatesTask(Task):
    """Spelled-out dates -> ISO 8601 dates, in three source word orders."""

    name = "dates"
    src_level = "word"
    tgt_level = "char"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One pair."""
        year = rng.randint(1900, 2099)
        month = rng.randint(1, 12)
        day = rng.randint(1, calendar.monthrange(year, month)[1])
        day_w, month_w, year_w = ordinal_words(day), [MONTHS[month - 1]], year_words(year, rng)
        form = rng.randrange(3)
        if form == 0:
            words = ["the"] + day_w + ["of"] + month_w + year_w
        elif form == 1:
            words = month_w + day_w + year_w
        else:
            words = day_w + month_w + year_w
        return " ".join(words), f"{year:04d}-{month:02d}-{day:02d}"

    def src_symbols(self) -> list[str]:
        """Every source word."""
        words = ONES + TEENS + TENS + ORDINAL_ONES + ORDINAL_TEENS + ["twentieth", "thirtieth"]
        return words + MONTHS + ["the", "of", "oh", "hundred", "thousand"]

    def tgt_symbols(self) -> list[str]:
        """Digits and the dash."""
        return list("0123456789-")


TASKS: dict[str, type[Task]] = {"dates": DatesTask, "copy": CopyTask, "reverse": ReverseTask, "sort": SortTask}


def get_task(cfg: TaskConfig) -> Task:
    """The task named by ``cfg.name``."""
    return TASKS[cfg.name](cfg)
