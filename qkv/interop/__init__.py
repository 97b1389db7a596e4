"""Other libraries' checkpoints in and out: :mod:`qkv.interop.hf` maps Hugging Face GPT-2 and BERT
weights to qkv's models and back; :mod:`qkv.interop.convert` turns such a directory into a run
directory (``qkv convert --from-hf``) and a run into one (``qkv export --to-hf``)."""

from qkv.interop.convert import convert_from_hf, export_to_hf

__all__ = ["convert_from_hf", "export_to_hf"]
