"""Data: tokenizers (fixed vocabularies, BPE), built-in synthetic tasks, parallel text, batching."""

from qkv.data.batching import Seq2SeqBatch, encode_pairs, encode_source, pad
from qkv.data.bpe import SubwordTokenizer, load_tokenizer
from qkv.data.sources import (
    ParallelSource,
    Source,
    SyntheticSource,
    TaskStream,
    build_source,
    resolve_paths,
)
from qkv.data.store import BucketStream, TokenStore, prepare_store
from qkv.data.tasks import TASKS, Task, TaskConfig, get_task
from qkv.data.text import ParallelText, iter_lines, iter_pairs, read_lines, read_parallel
from qkv.data.vocab import Vocab

__all__ = [
    "TASKS",
    "SubwordTokenizer",
    "ParallelSource",
    "ParallelText",
    "Seq2SeqBatch",
    "Source",
    "SyntheticSource",
    "Task",
    "TaskConfig",
    "TaskStream",
    "TokenStore",
    "BucketStream",
    "prepare_store",
    "Vocab",
    "build_source",
    "encode_pairs",
    "encode_source",
    "get_task",
    "load_tokenizer",
    "pad",
    "iter_lines",
    "iter_pairs",
    "read_lines",
    "read_parallel",
    "resolve_paths",
]
