"""The trainer's layout (`--format npy`): layout.py, writer.py, reader.py, shards.py (merging),
text_ids.py, and format.py (its side of the store interface)."""

from ..features import UtteranceFeatures
from .layout import FEATURE_DIRS, fanout, relative_paths
from .reader import NpyRows, load_npy
from .writer import NpyWriter

__all__ = ["FEATURE_DIRS", "NpyRows", "NpyWriter", "UtteranceFeatures", "fanout",
           "load_npy", "relative_paths"]
