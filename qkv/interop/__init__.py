"""Other libraries' checkpoints in and out: :mod:`qkv.interop.hf` maps Hugging Face GPT-2 and BERT
weights to qkv's models and back; :mod:`qkv.interop.convert` turns such a directory into a run
directory (``qkv convert --from-hf``) and a run into one (``qkv export``); :mod:`qkv.interop.marian` does
the same for Marian (opus-mt) translation models, and :mod:`qkv.interop.ct2` writes a translation run for
CTranslate2 (``qkv export --format ct2``)."""

from qkv.interop.convert import convert_from_hf, export_to_hf
from qkv.interop.ct2 import export_to_ct2

__all__ = ["convert_from_hf", "export_to_ct2", "export_to_hf"]
