"""What a store holds per utterance, whatever its format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class UtteranceFeatures:
    id: str
    text_ids: np.ndarray   # [text_len] int32
    codes: np.ndarray      # [code_len] int32
    condition: np.ndarray  # [32, 1280] float32
    emo_vec: np.ndarray    # [1280] float32
