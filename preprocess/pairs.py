"""Prompt/target pair manifests for the GPT trainer (contract §10), and the trainer's own checks.

The trainer reads only pair records: the *prompt* utterance gives the speaker latent and the
emotion vector, the *target* utterance gives the text ids and the codes to predict. Both come
from the same speaker and the same split (train pairs from train records, val from val).

Order of work, as the reference: one `random.Random(seed)`, seeded once; for each output
directory in the order given, train then val; the random state carries on from one manifest to
the next (so the pairs of a directory depend on the directories before it). Within a manifest,
speakers in first-appearance order; a speaker with fewer than 2 usable utterances is skipped
(reported); each speaker's list is shuffled once; every target that passes the length filters
gets `pairs_per_target` prompts, distinct, never itself.

Prompt selection. The reference shuffles all of the speaker's other utterances for every target
and takes the first k. The result is a uniformly random ordered k-subset, but producing it costs
n - 2 random draws per target, O(n^2) per speaker: 10^10 draws for a speaker with 100k
utterances. No shortcut reproduces that random stream: the first k elements of a Fisher-Yates
shuffle are fixed by its *last* draws, and each draw's rejection sampling depends on the bits
actually produced, so all of them must be generated. We therefore draw the same distribution
another way: a partial Fisher-Yates over a virtual index array (k draws and a k-entry dict per
target), giving a uniformly random ordered k-subset of the other utterances in O(k). Pairs are
deterministic for a seed (only `shuffle` and `randrange`, both stable across CPython versions)
and statistically identical to the reference's, but not the same pairs.
`selection="reference"` reproduces the reference's exact pairs for a seed (same records, same
order), at the reference's quadratic cost: for comparisons with pair files it made.

Other decisions:
- Speaker: the record's `speaker`; when empty, `speaker_regex` (re.search) on the file-name stem
  of `audio_path`, its first group or else the whole match. No speaker: the record is skipped and
  counted, never a crash (the reference raises).
- `prompt_duration`: the prompt's input `duration`, or its measured `audio_duration` when the
  input gave none (the trainer never reads it; null when neither is known).
- `prompt_condition_len`: the prompt's `condition_len` (32 when absent, the trainer's default).
- Targets longer than the trainer's hard limits (text_len > 600, code_len > 1816) would crash
  training with an index error; they are filtered like too-short ones (0 disables).
- A manifest that yields no pairs is a warning, not an error (small val sets), and no pair file
  is written for it (a stale one is removed, which requires `force`).
- Records of the packed layout (`row` instead of `*_path`) cannot be read by the trainer: error,
  telling the user to export them to npy first.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .contract import (CODEBOOK_SIZE, CONDITION_LEN, MANIFESTS, MAX_CODE_LEN, MAX_TEXT_LEN, MODEL_DIM,
                       PAIR_FILES, PATH_KEYS)
from .store.fsutil import fsync_dir, write_atomic

REPORT = "report.json"

PAIR_KEYS = (
    "id", "speaker",
    "prompt_id", "prompt_audio_path", "prompt_condition_path", "prompt_condition_len",
    "prompt_emo_vec_path", "prompt_duration",
    "target_id", "target_audio_path", "target_text", "target_text_ids_path", "target_text_len",
    "target_codes_path", "target_code_len", "target_emo_vec_path",
)

_MAX_ERRORS = 1000       # per manifest in report.json; the rest are counted
_MAX_NAMES = 100         # single-utterance speakers listed by name in report.json


class PairError(Exception):
    """The pairs cannot be built (packed layout, not an output directory, outputs exist)."""


@dataclass
class ManifestPairs:
    """What happened to one manifest; the first six fields are the reference's report entry."""
    path: str
    total_lines: int = 0
    blank_lines: int = 0
    valid_records: int = 0
    skipped_records: int = 0
    errors: list[dict] = field(default_factory=list)
    # ours
    split: str = ""
    errors_not_listed: int = 0
    pairs_file: str | None = None
    pairs_written: int = 0
    speakers: int = 0
    single_utterance_speakers: int = 0
    single_utterance_speaker_names: list[str] = field(default_factory=list)
    records_without_speaker: int = 0
    targets_filtered: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class PairReport:
    manifests: list[ManifestPairs] = field(default_factory=list)

    @property
    def total_pairs(self) -> int:
        return sum(m.pairs_written for m in self.manifests)

    @property
    def warnings(self) -> list[str]:
        return [w for m in self.manifests for w in m.warnings]


# -- reading -------------------------------------------------------------------------------


def _error(line: int, message: str, raw: bytes, column=None, char=None) -> dict:
    snippet = raw.decode("utf-8", errors="replace").strip()[:120]
    return {"line": line, "error": message, "column": column, "char": char, "snippet": snippet}


def _record_problem(obj: dict) -> str | None:
    for key in PATH_KEYS:
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"missing or empty {key!r}"
    for key in ("text_len", "code_len"):
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key!r} is not an integer: {value!r}"
    return None


def _packed_error(path: Path) -> PairError:
    out = path.parent
    return PairError(
        f"{path} is a packed-store manifest (records point to rows of features.zarr, not to "
        f".npy files), which the trainer cannot read. Export it first: "
        f"`preprocess export {out} --to npy DEST`, then build pairs in DEST.")


def _is_packed(obj: dict) -> bool:
    return "row" in obj and not any(k in obj for k in PATH_KEYS)


def read_pairing_records(path: Path, entry: ManifestPairs) -> list[tuple[int, dict]]:
    """(line number, record) for every usable record; problems go to `entry`.

    The acceptance rule is read_output_manifest's (a torn or malformed line is dropped, the rest
    is read), with line numbers kept for report.json; records must also carry the 4 paths and
    integer lengths, and ids must be unique."""
    records: list[tuple[int, dict]] = []
    first_line: dict[str, int] = {}

    def reject(error: dict) -> None:
        entry.skipped_records += 1
        if len(entry.errors) < _MAX_ERRORS:
            entry.errors.append(error)
        else:
            entry.errors_not_listed += 1

    with open(path, "rb") as f:
        data = f.read()
    # split as read_output_manifest does (on b"\n" only), so both agree on every line
    for n, raw in enumerate(io.BytesIO(data), start=1):
        entry.total_lines += 1
        if not raw.strip():
            entry.blank_lines += 1
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            reject(_error(n, "line is not valid UTF-8", raw, char=e.start))
            continue
        except json.JSONDecodeError as e:
            reject(_error(n, f"malformed JSON: {e.msg}", raw, e.colno, e.pos))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
            reject(_error(n, "not a JSON object with a string 'id'", raw))
            continue
        if _is_packed(obj):
            raise _packed_error(path)
        problem = _record_problem(obj)
        if problem is None and obj["id"] in first_line:
            problem = f"duplicate id (first on line {first_line[obj['id']]})"
        if problem:
            reject(_error(n, problem, raw))
            continue
        first_line[obj["id"]] = n
        records.append((n, obj))
    entry.valid_records = len(records)
    return records


def _first_record(path: Path) -> dict | None:
    """The first parseable record of a manifest, read lazily (the up-front packed check)."""
    with open(path, "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


def speaker_of(record: dict, speaker_regex: re.Pattern | None) -> str:
    """The record's speaker, or '' when it has none and the regex finds none."""
    speaker = record.get("speaker")
    if isinstance(speaker, str) and speaker:
        return speaker
    if speaker_regex is None:
        return ""
    stem = Path(str(record.get("audio_path") or "")).stem
    match = speaker_regex.search(stem)
    if not match:
        return ""
    return (match.group(1) if speaker_regex.groups else match.group(0)) or ""


# -- pairing -------------------------------------------------------------------------------


def _sample_positions(rng: random.Random, n: int, k: int) -> list[int]:
    """k distinct positions of range(n) in random order: a partial Fisher-Yates over a virtual
    array, O(k) time and memory whatever n is."""
    moved: dict[int, int] = {}  # position -> value, where the virtual array differs from identity
    out = []
    for i in range(k):
        j = i + rng.randrange(n - i)
        out.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return out


def _prompts_linear(rng: random.Random, items: list[dict], t: int, k: int) -> list[dict]:
    n_others = len(items) - 1
    # position p among the others is item p before the target, item p + 1 after it
    return [items[p if p < t else p + 1] for p in _sample_positions(rng, n_others, min(k, n_others))]


def _prompts_reference(rng: random.Random, items: list[dict], t: int, k: int) -> list[dict]:
    target_id = items[t]["id"]
    others = [r for r in items if r["id"] != target_id]
    rng.shuffle(others)
    return others[:k]


def _duration(record: dict):
    value = record.get("duration")
    return value if value is not None else record.get("audio_duration")


def _prompt_part(prompt: dict) -> dict:
    return {
        "prompt_id": prompt["id"],
        "prompt_audio_path": prompt.get("audio_path", ""),
        "prompt_condition_path": prompt["condition_path"],
        "prompt_condition_len": int(prompt.get("condition_len", CONDITION_LEN)),
        "prompt_emo_vec_path": prompt["emo_vec_path"],
        "prompt_duration": _duration(prompt),
    }


def _target_part(target: dict) -> dict:
    return {
        "target_id": target["id"],
        "target_audio_path": target.get("audio_path", ""),
        "target_text": target.get("text", ""),
        "target_text_ids_path": target["text_ids_path"],
        "target_text_len": target["text_len"],
        "target_codes_path": target["codes_path"],
        "target_code_len": target["code_len"],
        "target_emo_vec_path": target["emo_vec_path"],
    }


def pair_record(speaker: str, prompt: dict, target: dict) -> dict:
    """The trainer's 16 keys in the contract's order; paths copied unchanged (both records and
    the pair file sit in the same output directory)."""
    return {"id": f"{target['id']}__{prompt['id']}", "speaker": speaker,
            **_prompt_part(prompt), **_target_part(target)}


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps(ensure_ascii=False) settings


class _LineFormatter:
    """json.dumps(pair_record(...), ensure_ascii=False) + newline, byte for byte, built from
    pieces encoded once per record (a record recurs in about 2k pairs). JSON escapes strings
    character by character, so the pair id's escape is the concatenation of the ids' escapes."""

    def __init__(self):
        self.cache: dict[tuple[str, str], tuple[str, str]] = {}
        self.speakers: dict[str, str] = {}

    def _piece(self, side: str, record: dict) -> tuple[str, str]:
        key = (side, record["id"])
        piece = self.cache.get(key)
        if piece is None:
            part = _prompt_part(record) if side == "prompt" else _target_part(record)
            piece = self.cache[key] = (_ENCODER.encode(record["id"])[1:-1],
                                       _ENCODER.encode(part)[1:-1])
        return piece

    def __call__(self, speaker: str, prompt: dict, target: dict) -> str:
        prompt_id, p = self._piece("prompt", prompt)
        target_id, t = self._piece("target", target)
        spk = self.speakers.get(speaker)
        if spk is None:
            spk = self.speakers[speaker] = _ENCODER.encode(speaker)
        return f'{{"id": "{target_id}__{prompt_id}", "speaker": {spk}, {p}, {t}}}\n'


@dataclass
class _Options:
    pairs_per_target: int
    max_pairs: int
    min_text_len: int
    min_code_len: int
    max_text_len: int
    max_code_len: int
    speaker_regex: re.Pattern | None
    selection: str


def _keep_target(r: dict, opts: _Options) -> bool:
    return (opts.min_text_len <= r["text_len"] and opts.min_code_len <= r["code_len"]
            and (opts.max_text_len <= 0 or r["text_len"] <= opts.max_text_len)
            and (opts.max_code_len <= 0 or r["code_len"] <= opts.max_code_len))


def group_by_speaker(records: list[tuple[int, dict]], opts: _Options,
                     entry: ManifestPairs) -> dict[str, list[dict]]:
    """Speakers in first-appearance order with their records; counts go to `entry`."""
    groups: dict[str, list[dict]] = {}
    for _, record in records:
        speaker = speaker_of(record, opts.speaker_regex)
        if not speaker:
            entry.records_without_speaker += 1
            continue
        groups.setdefault(speaker, []).append(record)
    entry.speakers = len(groups)
    for speaker, items in groups.items():
        if len(items) < 2:
            entry.single_utterance_speakers += 1
            if len(entry.single_utterance_speaker_names) < _MAX_NAMES:
                entry.single_utterance_speaker_names.append(speaker)
        else:
            entry.targets_filtered += sum(not _keep_target(r, opts) for r in items)
    return groups


def generate_pairs(rng: random.Random, groups: dict[str, list[dict]],
                   opts: _Options) -> Iterator[tuple[str, dict, dict]]:
    """(speaker, prompt, target) for each pair of one manifest, lazily (there can be millions)."""
    choose = _prompts_reference if opts.selection == "reference" else _prompts_linear
    written = 0
    for speaker, items in groups.items():
        if len(items) < 2:
            continue
        rng.shuffle(items)
        for t, target in enumerate(items):
            if not _keep_target(target, opts):
                continue
            for prompt in choose(rng, items, t, opts.pairs_per_target):
                yield speaker, prompt, target
                written += 1
                if opts.max_pairs and written >= opts.max_pairs:
                    return


def _write_lines_atomic(path: Path, lines: Iterator[str]) -> int:
    """Stream lines to `<path>.tmp`, fsync, rename: a crash never leaves a partial pair file.
    Returns the number of lines; with none, nothing is created."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
            count += 1
        f.flush()
        os.fsync(f.fileno())
    if count == 0:
        tmp.unlink()
        return 0
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return count


def build_pairs(out_dirs: list[Path], *, pairs_per_target: int = 2, max_pairs: int = 0,
                min_text_len: int = 1, min_code_len: int = 1, seed: int = 2025,
                speaker_regex: str | re.Pattern | None = None, force: bool = False,
                max_text_len: int = MAX_TEXT_LEN, max_code_len: int = MAX_CODE_LEN,
                selection: str = "linear") -> PairReport:
    """Write gpt_pairs_train.jsonl, gpt_pairs_val.jsonl and report.json in every output dir.

    selection: "linear" (default; see the module docstring) or "reference" (the reference's
    exact pairs for a seed, quadratic in the size of a speaker)."""
    if pairs_per_target < 1:
        raise ValueError("pairs_per_target must be at least 1")
    if selection not in ("linear", "reference"):
        raise ValueError(f"selection must be 'linear' or 'reference', not {selection!r}")
    if isinstance(speaker_regex, str):
        speaker_regex = re.compile(speaker_regex)
    opts = _Options(pairs_per_target, max(0, max_pairs), min_text_len, min_code_len,
                    max_text_len, max_code_len, speaker_regex, selection)
    dirs = [Path(d) for d in out_dirs]

    # Every check that can refuse the whole job runs before anything is written.
    for out in dirs:
        if not out.is_dir():
            raise PairError(f"not a directory: {out}")
        manifests = [out / name for name in MANIFESTS.values()]
        if not any(p.is_file() for p in manifests):
            raise PairError(f"{out} holds neither {' nor '.join(MANIFESTS.values())}; "
                            "is it an output directory of `preprocess`?")
        for p in manifests:
            first = _first_record(p) if p.is_file() else None
            if first is not None and _is_packed(first):
                raise _packed_error(p)
        existing = [out / n for n in (*PAIR_FILES.values(), REPORT) if (out / n).exists()]
        if existing and not force:
            raise PairError(f"{', '.join(map(str, existing))} already exist(s); "
                            "pass force to overwrite")

    rng = random.Random(seed)
    report = PairReport()
    for out in dirs:
        entries = []
        for split, name in MANIFESTS.items():
            manifest = out / name
            entry = ManifestPairs(path=str(manifest), split=split)
            entries.append(entry)
            pair_path = out / PAIR_FILES[split]
            if manifest.is_file():
                groups = group_by_speaker(read_pairing_records(manifest, entry), opts, entry)
                line = _LineFormatter()
                lines = (line(*pair) for pair in generate_pairs(rng, groups, opts))
                entry.pairs_written = _write_lines_atomic(pair_path, lines)
            else:
                entry.warnings.append(f"{manifest} not found")
            if entry.pairs_written:
                entry.pairs_file = PAIR_FILES[split]
            else:
                if pair_path.exists():  # stale, from an earlier run (reachable only with force)
                    pair_path.unlink()
                entry.warnings.append(
                    f"{manifest}: no pairs ({entry.valid_records} usable records, "
                    f"{entry.speakers - entry.single_utterance_speakers} speakers with 2+ "
                    f"utterances); {PAIR_FILES[split]} not written")
            if entry.skipped_records:
                entry.warnings.append(f"{manifest}: {entry.skipped_records} line(s) skipped, "
                                      f"see errors in {REPORT}")
            if entry.records_without_speaker:
                entry.warnings.append(
                    f"{manifest}: {entry.records_without_speaker} record(s) without a speaker "
                    "were not paired (give them a speaker, or pass a speaker regex)")
        document = {
            "options": {"seed": seed, "pairs_per_target": pairs_per_target,
                        "max_pairs": opts.max_pairs, "min_text_len": min_text_len,
                        "min_code_len": min_code_len, "max_text_len": max_text_len,
                        "max_code_len": max_code_len,
                        "speaker_regex": speaker_regex.pattern if speaker_regex else None,
                        "selection": selection,
                        # the random state carries across directories, in this order
                        "datasets": [str(d) for d in dirs]},
            "manifests": [asdict(e) for e in entries],
        }
        write_atomic(out / REPORT, (json.dumps(document, ensure_ascii=False, indent=2) + "\n")
                     .encode("utf-8"))
        report.manifests.extend(entries)
    return report


# -- the trainer's reading rules -----------------------------------------------------------


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _load(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None, f"missing file {path}"
    except Exception as e:  # a corrupt or pickled file: the trainer drops the sample
        return None, f"cannot load {path}: {type(e).__name__}: {e}"
    if not isinstance(array, np.ndarray):
        return None, f"{path} is not a single array"
    if array.size == 0:
        return None, f"{path} is empty"
    return array, None


def _check_array(path: Path, kind: str, length: int | None, vocab_size: int | None) -> str | None:
    array, problem = _load(path)
    if problem:
        return problem
    if kind in ("text_ids", "codes"):
        if array.ndim != 1:
            return f"{kind} {path} has shape {list(array.shape)}, expected 1-D"
        if array.dtype.kind not in "iu":
            return f"{kind} {path} has dtype {array.dtype}, expected integers"
        if array.shape[0] != length:
            return f"{kind} {path} holds {array.shape[0]} values but the pair says {length}"
        high = CODEBOOK_SIZE if kind == "codes" else vocab_size
        if array.min() < 0 or (high is not None and array.max() >= high):
            return (f"{kind} {path} has values in [{array.min()}, {array.max()}], "
                    f"expected [0, {high - 1 if high else 'vocab'}]")
        return None
    expected = (CONDITION_LEN, MODEL_DIM) if kind == "condition" else (MODEL_DIM,)
    if tuple(array.shape) != expected:
        return f"{kind} {path} has shape {list(array.shape)}, expected {list(expected)}"
    if array.dtype.kind not in "iuf" or not np.isfinite(array).all():
        return f"{kind} {path} is not finite numeric data ({array.dtype})"
    return None


def check_pairs_for_trainer(pair_file: str | os.PathLike, vocab_size: int | None = None,
                            max_problems: int = 1000) -> list[str]:
    """Apply the trainer's reading rules (contract §10) to a pair manifest; [] means accepted.

    Checks the required keys, the emotion fallback (prompt, then target), path resolution
    against the pair file's directory, np.load(allow_pickle=False), array lengths equal to the
    pair's lengths, exact condition [32, 1280] and emo [1280] shapes, the hard length limits,
    codes in [0, 8191] and, when `vocab_size` is given, text ids below it."""
    pair_file = Path(pair_file)
    if not pair_file.is_file():
        return [f"pair file not found: {pair_file}"]
    base = pair_file.parent
    problems: list[str] = []
    # the trainer splits a language suffix off its manifest arguments at these separators
    for sep in ("::", "@", "="):
        if sep in str(pair_file.resolve()):
            problems.append(f"{pair_file}: the path contains {sep!r}, which the trainer's "
                            "--train-manifest/--val-manifest parsing splits off")
    cache: dict[tuple, str | None] = {}  # prompts recur across pairs: check each file once
    records = 0

    def check(kind: str, value: str, length: int | None) -> str | None:
        key = (kind, value, length)
        if key not in cache:
            cache[key] = _check_array(_resolve(base, value), kind, length, vocab_size)
        return cache[key]

    with open(pair_file, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if len(problems) >= max_problems:
                problems.append("... (stopped after max_problems)")
                break
            if not raw.strip():
                continue
            where = f"{pair_file.name} line {n}"
            try:
                rec = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(f"{where}: not valid JSON ({e})")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{where}: not a JSON object")
                continue
            records += 1
            where = f"{where} (id {rec.get('id')!r})"
            missing = [k for k in ("id", "target_text_ids_path", "target_codes_path",
                                   "prompt_condition_path", "target_text_len", "target_code_len")
                       if k not in rec]
            if missing:
                problems.append(f"{where}: missing key(s) {', '.join(missing)}")
                continue
            emo = rec.get("prompt_emo_vec_path") or rec.get("target_emo_vec_path")
            if not emo:
                problems.append(f"{where}: neither prompt_emo_vec_path nor target_emo_vec_path")
                continue
            text_len, code_len = rec["target_text_len"], rec["target_code_len"]
            if not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in (text_len, code_len)):
                problems.append(f"{where}: lengths must be integers")
                continue
            if rec.get("prompt_condition_len", CONDITION_LEN) != CONDITION_LEN:
                problems.append(f"{where}: prompt_condition_len {rec['prompt_condition_len']!r}, "
                                f"expected {CONDITION_LEN}")
            if not 1 <= text_len <= MAX_TEXT_LEN:
                problems.append(f"{where}: target_text_len {text_len} outside 1..{MAX_TEXT_LEN}")
            if not 1 <= code_len <= MAX_CODE_LEN:
                problems.append(f"{where}: target_code_len {code_len} outside 1..{MAX_CODE_LEN}")
            for kind, key, length in (("text_ids", "target_text_ids_path", text_len),
                                      ("codes", "target_codes_path", code_len),
                                      ("condition", "prompt_condition_path", None)):
                value = rec[key]
                if not isinstance(value, str) or not value:
                    problems.append(f"{where}: empty {key}")
                    continue
                problem = check(kind, value, length)
                if problem:
                    problems.append(f"{where}: {problem}")
            problem = check("emo_vec", emo, None)
            if problem:
                problems.append(f"{where}: {problem}")
    if records == 0 and not problems:
        problems.append(f"{pair_file}: no pair records")
    return problems
