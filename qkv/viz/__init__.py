"""Looking inside: attention maps as data, static heatmaps, and the local attention explorer."""

from qkv.viz.maps import KINDS, AttentionMaps, attention_maps
from qkv.viz.plot import save_attention

__all__ = ["KINDS", "AttentionMaps", "attention_maps", "save_attention"]
