"""What the IndexTTS2 GPT trainer reads: limits, shapes, codebook, manifest keys, file names.

Every module that writes or checks an output directory takes these from here, so a change to
the trainer's contract is one edit. Pure constants; imports nothing.
"""

from __future__ import annotations

# -- trainer limits (contract §10) -----------------------------------------------------------
# mel_pos_embedding has 1818 rows, text_pos_embedding 602, each minus the start and stop tokens.
MAX_CODE_LEN = 1816
MAX_TEXT_LEN = 600
CODES_PER_SECOND = 50

# -- shapes and value ranges ------------------------------------------------------------------
CODEBOOK_SIZE = 8192        # MaskGCT semantic codec: codes lie in [0, 8192)
MODEL_DIM = 1280            # UnifiedVoice width: condition [32, 1280], emo_vec [1280]
CONDITION_LEN = 32          # perceiver latents per utterance
W2V_BERT_LAYER = 17         # hidden_states[17] of w2v-BERT 2.0 feeds the codec and the heads

# -- manifests --------------------------------------------------------------------------------
# Source fields of a corpus record.
SOURCE_FIELDS = ("id", "text", "audio", "speaker", "language", "duration")
# The first six keys of an output manifest line, copied from the record (audio -> audio_path).
BASE_KEYS = ("id", "audio_path", "text", "speaker", "language", "duration")
# The four feature paths of the npy layout, in the trainer's order.
PATH_KEYS = ("text_ids_path", "codes_path", "condition_path", "emo_vec_path")
# Keys every output manifest line carries, whatever the store.
REQUIRED_KEYS = (*BASE_KEYS, "text_len", "code_len", "condition_len")

# -- the files of an output directory ---------------------------------------------------------
MANIFESTS = {"train": "train_manifest.jsonl", "val": "val_manifest.jsonl"}
PAIR_FILES = {"train": "gpt_pairs_train.jsonl", "val": "gpt_pairs_val.jsonl"}
REJECTS = "rejects.jsonl"
STATS = "stats.json"
PROGRESS_FILE = ".preprocessing_progress.txt"
BATCH_BUDGET = ".batch_budget.json"  # what the automatic batch budget measured and chose
SHARDS = "shards"           # per-device or per-job sub-stores awaiting a merge
