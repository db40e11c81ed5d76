"""`preprocess text-ids OUT --tokenizer NEW.model`: re-tokenise a finished output in place.

Every record keeps its line, its codes and its latents; only its text ids and `text_len` change
(contract §11). The ids are made from the stored `text` (already cleaned, so not cleaned again)
with the main job's language rule: --language, else the original run's --language, else the
record's own `language`. A record whose new ids are empty or longer than the run's max_text_len
becomes a reject (stage "text-ids"), as in the main job. stats.json and the journal's fingerprint
then describe the new tokenizer, so preprocess-data with it resumes this output.

All work runs under the output directory's lock (OutputDir, which also repairs what an
interrupted preprocess-data run left). The store's part of each step is its TextIdsStaging
(preprocess/store/formats.py; npy/text_ids.py and zarr/text_ids.py say how each format does it).
The steps:

  A  compute    New ids for every manifest record, in chunks. Each chunk is made durable by the
                store (`stage`: the npy layout writes them at new paths) and then appended to
                .text_ids_progress.txt (a header naming tokenizer, language, generation N and
                the output's fingerprint; then one JSON line per record). A rerun skips them.
  B  prepare    The journal's fingerprint line becomes "text-ids-pending:<old>", so
                preprocess-data refuses the directory until this finishes. The store prepares
                the switch (`prepare`: the packed store stages a complete copy with the new text
                arrays in .text_ids_staging). New manifests, rejects and pair files are written
                as *.new.
  C  commit     .text_ids_commit.json, written atomically: the redo log. From here on the change
                is decided and only rolls forward.
  D  roll fwd   (idempotent; redone from the marker after a crash) stats.json with a vocabulary
                size valid for old and new ids; the store switches to the new ids (`switch`: the
                packed store exchanges itself with the staged copy in one atomic rename); each
                *.new renamed into place; journal := new fingerprint and the kept ids;
                stats.json; what the new ids replaced (`cleanup`), the progress file and finally
                the marker deleted.

On start: a marker means roll forward first; a pending fingerprint without a marker (a crash in
B) means put the old fingerprint back. Then the requested regeneration runs, unless the output
already has that tokenizer and language (or it is forced).

What is consistent when. Where new ids live at new paths (npy), at every instant each manifest
(and pair file) line points to ids of its own text_len: each manifest is replaced by one rename,
and old files are deleted only after the last one (stats.json's vocab_size covers both
meanwhile), so `preprocess verify` passes throughout. Where a line carries a row (zarr), the
store and the manifests cannot change in one rename: between the store's switch and the last
manifest rename, lines carry the old text_len; then preprocess-data refuses the directory
(pending fingerprint) and the next `text-ids` run restores consistency before anything else.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .contract import MANIFESTS, MAX_TEXT_LEN, PAIR_FILES, PROGRESS_FILE, REJECTS, SHARDS, STATS
from .manifest import Reject, read_output_manifest
from .store.dataset import OutputDir, dumps_line, fault_point
from .store.formats import CannotStage, detect_format
from .store.fsutil import append_durable, fsync_dir, write_atomic
from .store.journal import PENDING, Journal, fingerprint_of

PROGRESS = ".text_ids_progress.txt"
MARKER = ".text_ids_commit.json"
STAGING = ".text_ids_staging"
STAGE = "text-ids"
_PROGRESS_HEADER = "# text-ids "
# files a regeneration replaces (as <name>.new, then renamed)
_REPLACED = (*MANIFESTS.values(), REJECTS, *PAIR_FILES.values())


class TextIdsError(Exception):
    """The directory cannot be regenerated (not a finished output, damaged, unsupported)."""


@dataclass
class TextIdsSummary:
    output_dir: Path
    format: str = ""
    tokenizer: str = ""
    tokenizer_sha256: str = ""
    vocab_size: int | None = None
    language_rule: str = ""
    records: int = 0            # utterances in the manifests now
    computed: int = 0           # ids tokenised by this invocation
    resumed: int = 0            # ids taken from an interrupted invocation
    changed_length: int = 0     # kept records whose text_len changed
    rejected: int = 0           # records that became rejects
    rolled_forward: bool = False  # an interrupted commit was finished first
    up_to_date: bool = False    # the output already had this tokenizer and language
    fingerprint: str = ""

    def text(self) -> str:
        sha = self.tokenizer_sha256[:12]
        if self.up_to_date:
            return (f"{self.output_dir} already holds text ids made with {self.tokenizer} "
                    f"(sha256 {sha}) and {self.language_rule}: nothing to do for its "
                    f"{self.records} utterances (--force regenerates them anyway).")
        finished = " after finishing an interrupted commit" if self.rolled_forward else ""
        return (f"Regenerated the text ids of {self.output_dir} ({self.format}){finished} with "
                f"{self.tokenizer} (sha256 {sha}, {self.vocab_size} pieces), language from "
                f"{self.language_rule}: {self.records} utterances kept, {self.changed_length} of "
                f"them with a new text_len, {self.rejected} rejected (stage '{STAGE}' in "
                f"rejects.jsonl); {self.computed} tokenised now and {self.resumed} taken from an "
                f"interrupted run. Codes and latents are untouched. The output's fingerprint is "
                f"now {self.fingerprint[:12]}: preprocess-data with this tokenizer (and the same "
                f"other settings) resumes it.")


def regenerate_text_ids(out_dir: str | os.PathLike, tokenizer: str | os.PathLike,
                        language: str | None = None, progress: bool = True, *,
                        force: bool = False, workers: int = 1, chunk: int = 1024) -> TextIdsSummary:
    """Re-tokenise every record of the finished output `out_dir` with `tokenizer` (see the
    module docstring). `language` overrides the original run's language option. `workers` > 1
    tokenises in that many processes; `chunk` records are made durable at a time.
    Resumable: after a kill at any instant, the same call gives the same final result."""
    from .text import TextTokenizer

    out, tokenizer = Path(out_dir), Path(tokenizer)
    if not tokenizer.is_file():
        raise TextIdsError(f"tokenizer {tokenizer} not found")
    header = _check_output(out)
    fmt = detect_format(out)
    output = OutputDir(out, header, lambda: fmt.reopen_writer(out))  # the lock, and repairs
    staging = fmt.text_ids(out, output.store, out / STAGING)
    summary = TextIdsSummary(out, fmt.name, str(tokenizer))
    try:
        try:
            staging.check_supported()
        except CannotStage as e:
            raise TextIdsError(str(e)) from None
        finished = _finish_interrupted(out, output, staging)
        summary.rolled_forward = finished is not None
        prov = _read_provenance(out)
        options = prov.get("options") or {}
        tok = TextTokenizer(tokenizer)
        summary.tokenizer_sha256, summary.vocab_size = tok.sha256, tok.vocab_size
        summary.language_rule = (f"--language {language}" if language else
                                 f"the original run's --language {options['language']}"
                                 if options.get("language") else "each record's own language")
        lines = [(split, line) for split, name in MANIFESTS.items()
                 for line in read_output_manifest(out / name)[0]]
        summary.records = len(lines)
        old_fp = Journal.read_fingerprint(out)
        summary.fingerprint = old_fp
        same = (prov["files"]["tokenizer"].get("sha256") == tok.sha256
                and (language is None or language == options.get("language")))
        if same and (finished is not None or not force):
            if finished is not None:  # the interrupted run was this very one: report it
                run = finished["run"]
                summary.records, summary.rejected = run["records"], run["rejected"]
                summary.changed_length = run["changed_length"]
                summary.resumed = run["records"] + run["rejected"]
            else:
                summary.up_to_date = True
            return summary

        generation = staging.next_generation(lines)
        max_len = int(options.get("max_text_len", MAX_TEXT_LEN))
        new_ids = _compute(out, staging, lines, tok, language or options.get("language"), {
            "tokenizer_sha256": tok.sha256, "language": language, "fingerprint": old_fp,
            "generation": generation, "format": fmt.name, "max_text_len": max_len},
            workers, chunk, progress, summary)

        new_prov = _new_provenance(prov, tokenizer, tok, language)
        marker = _prepare(out, staging, lines, new_ids, max_len, generation, prov, new_prov,
                          summary, {"command": "text-ids", "tokenizer": str(tokenizer),
                                    "language": language})
        _roll_forward(out, staging, marker, full=True)
        summary.fingerprint = marker["new_fingerprint"]
        summary.records = marker["run"]["records"]
        return summary
    finally:
        output.close()


# -- checks and small helpers ------------------------------------------------------------------

def _check_output(out: Path) -> str:
    if not out.is_dir():
        raise TextIdsError(f"{out} is not a directory")
    header = Journal.read_fingerprint(out)
    if header is None:
        raise TextIdsError(f"{out} has no {PROGRESS_FILE} with a fingerprint line: "
                           "not an output directory of preprocess-data")
    if (out / SHARDS).exists():
        raise TextIdsError(f"{out}/{SHARDS} holds an unfinished multi-device run; "
                           f"finish it first (preprocess merge {out})")
    return header


def _read_provenance(out: Path) -> dict:
    try:
        stats = json.loads((out / STATS).read_text(encoding="utf-8"))
        prov = stats["provenance"]
        prov["files"]["tokenizer"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TextIdsError(f"{out}/{STATS} is missing or names no tokenizer: finish the "
                           "preprocess-data run first (rerun the same command)") from None
    return prov


def _journal_ids(out: Path) -> list[str]:
    data = (out / PROGRESS_FILE).read_bytes().decode("utf-8", errors="replace")
    return [line for line in data.split("\n")[1:-1] if line]


def _rewrite_journal(out: Path, fingerprint: str, ids: list[str] | None = None) -> None:
    Journal(out / PROGRESS_FILE, fingerprint, set()).rewrite(
        _journal_ids(out) if ids is None else ids)


def _limit_problem(ids: np.ndarray, max_len: int) -> str | None:
    if ids.size == 0:
        return "text tokenises to nothing with the new tokenizer"
    if ids.size > max_len:
        return f"{ids.size} text ids exceed the limit {max_len}"
    return None


def _new_provenance(prov: dict, tokenizer: Path, tok, language: str | None) -> dict:
    new = copy.deepcopy(prov)
    new["tokenizer"] = str(tokenizer)
    new["files"]["tokenizer"] = {"path": str(tokenizer), "sha256": tok.sha256,
                                 "bytes": tokenizer.stat().st_size}
    if language is not None:
        new.setdefault("options", {})["language"] = language
    new["vocab_size"] = tok.vocab_size
    new["text_ids"] = {"command": "text-ids", "language_override": language, **tok.fingerprint()}
    return new


# -- A: compute --------------------------------------------------------------------------------

def _read_progress(path: Path, header: str) -> dict[str, np.ndarray] | None:
    """Ids listed by an interrupted run with this very header, or None (start afresh)."""
    if not path.exists():
        return None
    data = path.read_bytes().decode("utf-8", errors="replace")
    rows = data.split("\n")
    if rows[0] != header:
        return None
    done, good = {}, [header]
    for row in rows[1:]:
        try:
            obj = json.loads(row)
            done[obj["id"]] = np.asarray(obj["ids"], dtype=np.int32).reshape(-1)
            good.append(row)
        except (ValueError, KeyError, TypeError):
            continue  # '' after the last newline, or a torn last line
    if len(good) != len(rows) - 1:  # a torn tail: rewrite, so appends start on a clean line
        write_atomic(path, ("\n".join(good) + "\n").encode("utf-8"))
    return done


def _compute(out: Path, staging, lines, tok, default_language: str | None, header: dict,
             workers: int, chunk: int, progress: bool, summary: TextIdsSummary) -> dict[str, np.ndarray]:
    path = out / PROGRESS
    header_line = _PROGRESS_HEADER + json.dumps(header, sort_keys=True)
    done = _read_progress(path, header_line)
    generation, max_len = header["generation"], header["max_text_len"]
    if done is None:
        staging.begin(generation)
        write_atomic(path, (header_line + "\n").encode("utf-8"))
        done = {}
    todo = [line for _, line in lines if line["id"] not in done]
    summary.resumed = len(lines) - len(todo)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="utt", disable=not progress, file=sys.stderr,
               desc="text-ids", mininterval=1.0, dynamic_ncols=True)
    try:
        for batch, results in _encode(todo, tok, default_language, workers, max(1, chunk)):
            arrays = [np.asarray(ids, dtype=np.int32) for ids in results]
            # durable before the progress file lists them
            staging.stage(generation, batch, arrays,
                          [_limit_problem(ids, max_len) is None for ids in arrays])
            append_durable(path, "".join(
                json.dumps({"id": line["id"], "ids": ids.tolist()}, ensure_ascii=False) + "\n"
                for line, ids in zip(batch, arrays)).encode("utf-8"))
            done.update((line["id"], ids) for line, ids in zip(batch, arrays))
            summary.computed += len(batch)
            bar.update(len(batch))
            fault_point("text_ids_after_stage")
    finally:
        bar.close()
    return done


_worker_tokenizer = None


def _init_worker(tokenizer_path: str) -> None:
    import signal

    from .text import TextTokenizer

    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    _worker_tokenizer = TextTokenizer(tokenizer_path)


def _encode_texts(pairs: list[tuple[str, str | None]]) -> list[list[int]]:
    return [_worker_tokenizer.encode(text, lang) for text, lang in pairs]


def _encode(todo: list[dict], tok, default_language, workers: int, chunk: int):
    """(lines, [ids per line]) per chunk, in order; the main job's language rule."""
    batches = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    jobs = [[(line.get("text") or "", default_language or line.get("language")) for line in b]
            for b in batches]
    if workers <= 1 or len(batches) <= 1:
        for batch, pairs in zip(batches, jobs):
            yield batch, [tok.encode(text, lang) for text, lang in pairs]
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(tok.bpe_model_path,))
    try:
        yield from zip(batches, pool.map(_encode_texts, jobs))
    finally:  # on an interruption, drop the chunks not started
        pool.shutdown(wait=True, cancel_futures=True)


# -- B, C: prepare and commit ------------------------------------------------------------------

def _prepare(out: Path, staging, lines, new_ids, max_len: int,
             generation: int, prov: dict, new_prov: dict, summary: TextIdsSummary,
             run: dict) -> dict:
    """Everything the roll forward needs, made durable; returns the marker once written."""
    kept: dict[str, list[dict]] = {split: [] for split in MANIFESTS}
    rejects = []
    for split, line in lines:
        ids = new_ids[line["id"]]
        reason = _limit_problem(ids, max_len)
        if reason is not None:
            rejects.append(Reject(None, line["id"], STAGE, reason).to_json())
            continue
        summary.changed_length += int(ids.size) != line.get("text_len")
        new = staging.relocate(generation, line, ids)  # same keys, same order
        new["text_len"] = int(ids.size)
        kept[split].append(new)
    summary.rejected = len(rejects)

    files: dict[str, bytes] = {}
    for split, name in MANIFESTS.items():
        if (out / name).exists() or kept[split]:
            files[name] = "".join(map(dumps_line, kept[split])).encode("utf-8")
    if rejects:
        old = (out / REJECTS).read_bytes() if (out / REJECTS).exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        files[REJECTS] = old + "".join(map(dumps_line, rejects)).encode("utf-8")
    by_id = {line["id"]: line for split in kept.values() for line in split}
    rejected = {r["id"] for r in rejects}
    for name in PAIR_FILES.values():
        if (out / name).exists():
            files[name] = _rewrite_pairs(out / name, by_id, rejected)

    old_fp = Journal.read_fingerprint(out)
    marker = {
        "format": summary.format, "generation": generation,
        "pending": PENDING + old_fp, "old_fingerprint": old_fp,
        "new_fingerprint": fingerprint_of(new_prov),
        "old_vocab_size": prov.get("vocab_size"), "provenance": new_prov,
        "run": {**run, "records": sum(map(len, kept.values())), "rejected": len(rejects),
                "changed_length": summary.changed_length, "version": __version__},
        "renames": list(files),
    }

    # B: from here preprocess-data refuses the directory until the roll forward is done
    _rewrite_journal(out, marker["pending"], [line["id"] for _, line in lines])
    fault_point("text_ids_after_pending")
    staging.prepare(generation, [line for split in kept.values() for line in split], new_ids)
    for name, data in files.items():
        write_atomic(out / f"{name}.new", data)
    fault_point("text_ids_before_marker")
    # C: the commit point
    write_atomic(out / MARKER, json.dumps(marker, indent=1, ensure_ascii=False).encode("utf-8"))
    fault_point("text_ids_after_marker")
    return marker


def _rewrite_pairs(path: Path, by_id: dict[str, dict], rejected: set[str]) -> bytes:
    """Pair records follow their target's new ids; pairs with a rejected side are dropped."""
    pairs, _ = read_output_manifest(path)
    kept = []
    for pair in pairs:
        if pair.get("target_id") in rejected or pair.get("prompt_id") in rejected:
            continue
        target = by_id.get(pair.get("target_id"))
        if target is not None:
            if "target_text_len" in pair:
                pair["target_text_len"] = target["text_len"]
            if "target_text_ids_path" in pair and "text_ids_path" in target:
                pair["target_text_ids_path"] = target["text_ids_path"]
        kept.append(pair)
    return "".join(map(dumps_line, kept)).encode("utf-8")


# -- D: roll forward, and what a crash leaves --------------------------------------------------

def _finish_interrupted(out: Path, output: OutputDir, staging) -> dict | None:
    """Finish (marker) or undo (pending fingerprint, no marker) an interrupted commit.
    Returns the marker of a commit it finished."""
    header = Journal.read_fingerprint(out)
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        marker = None
    except ValueError:  # written atomically, so never torn: not ours
        marker = {}
    if marker is not None:
        if header == marker.get("pending"):
            _roll_forward(out, staging, marker, full=True)
            return marker
        if header == marker.get("new_fingerprint"):
            _roll_forward(out, staging, marker, full=False)
            return marker
        _discard(out)  # a marker of an output since replaced (e.g. preprocess-data --force)
    if header.startswith(PENDING):
        _rewrite_journal(out, header[len(PENDING):])
        _discard(out)
    return None


def _discard(out: Path) -> None:
    (out / MARKER).unlink(missing_ok=True)
    for name in _REPLACED:
        (out / f"{name}.new").unlink(missing_ok=True)
        (out / f"{name}.new.tmp").unlink(missing_ok=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    fsync_dir(out)


def _roll_forward(out: Path, staging, marker: dict, full: bool) -> None:
    """Idempotent: each step checks whether it is done. `full`: the journal still says
    pending (the data and manifests may be switched); otherwise only the steps after the
    journal remain."""
    from .store.stats import write_stats

    if full:
        _transitional_stats(out, marker)
        try:
            switched = staging.switch(marker["generation"])
        except CannotStage as e:
            raise TextIdsError(str(e)) from None
        if switched:
            fault_point("text_ids_after_swap")
        for name in marker["renames"]:
            new = out / f"{name}.new"
            if new.exists():
                os.replace(new, out / name)
                fsync_dir(out)
                fault_point("text_ids_after_rename")
        ids = [line["id"] for name in MANIFESTS.values()
               for line in read_output_manifest(out / name)[0]]
        _rewrite_journal(out, marker["new_fingerprint"], ids)
        fault_point("text_ids_after_journal")
    write_stats(out, marker["provenance"], run=marker["run"])
    fault_point("text_ids_after_stats")
    staging.cleanup()  # what the new ids replaced
    for name in _REPLACED:
        (out / f"{name}.new.tmp").unlink(missing_ok=True)
    (out / PROGRESS).unlink(missing_ok=True)
    (out / f"{PROGRESS}.tmp").unlink(missing_ok=True)
    fsync_dir(out)
    fault_point("text_ids_after_cleanup")
    (out / MARKER).unlink(missing_ok=True)
    fsync_dir(out)


def _transitional_stats(out: Path, marker: dict) -> None:
    """While old and new ids are both in use, stats.json's vocab_size must admit both."""
    old, new = marker.get("old_vocab_size"), marker["provenance"].get("vocab_size")
    if not (isinstance(old, int) and isinstance(new, int)):
        return
    try:
        stats = json.loads((out / STATS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if stats.get("provenance", {}).get("vocab_size") not in (None, max(old, new)):
        stats["provenance"]["vocab_size"] = max(old, new)
        write_atomic(out / STATS, (json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode())
