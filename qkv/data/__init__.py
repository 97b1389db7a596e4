"""Data: vocabularies, built-in synthetic tasks, batching."""

from qkv.data.batching import Seq2SeqBatch, encode_pairs, encode_source, pad
from qkv.data.tasks import TASKS, Task, TaskConfig, get_task
from qkv.data.vocab import Vocab

__all__ = [
    "TASKS",
    "Seq2SeqBatch",
    "Task",
    "TaskConfig",
    "Vocab",
    "encode_pairs",
    "encode_source",
    "get_task",
    "pad",
]
