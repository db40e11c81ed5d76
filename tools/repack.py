"""Repack a JSONL/CSV corpus manifest into another source kind `--manifest` reads.

    python tools/repack.py --to tar|parquet|arrow|lhotse|lhotse-cuts MANIFEST OUT [--per-shard N]

- tar:          WebDataset shards OUT/shard-000000.tar, ...: per record `ID.EXT` (the audio file's
                bytes, unchanged) and `ID.json` (id, text, speaker, language, duration)
- parquet:      OUT/data-000000.parquet, ...: columns id, text, speaker, language, duration and
                audio (the Hugging Face `Audio` struct {bytes, path})
- arrow:        a `datasets.save_to_disk` folder: state.json, dataset_info.json and
                data-00000-of-0000N.arrow files (Arrow IPC stream) with the same columns
- lhotse:       OUT/recordings.jsonl.gz and OUT/supervisions.jsonl.gz, one recording per audio
                file (paths absolute), one supervision spanning it
- lhotse-cuts:  OUT/cuts.jsonl.gz, one MonoCut per record with its recording and supervision

Audio bytes are copied as they are, so each kind decodes to the loose files' samples. Records
whose audio file is missing are skipped (and counted).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("tar", "parquet", "arrow", "lhotse", "lhotse-cuts")
META = ("id", "text", "speaker", "language", "duration")


def loose_records(manifest: Path) -> tuple[list[tuple[dict, Path]], int]:
    """(fields, audio file) of every good record of a JSONL/CSV manifest; and how many were skipped."""
    from preprocess.manifest import Record, read_manifest, resolve_audio

    out, skipped = [], 0
    for item in read_manifest(manifest):
        if not isinstance(item, Record):
            skipped += 1
            continue
        path = resolve_audio(item.audio, manifest.resolve().parent)
        if path is None:
            skipped += 1
            continue
        out.append(({"id": item.id, "text": item.text, "speaker": item.speaker,
                     "language": item.language, "duration": item.duration}, path))
    return out, skipped


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same corpus gives the same shard bytes
    tf.addfile(info, io.BytesIO(data))


def to_tar(records, out: Path, per_shard: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, chunk in enumerate(_chunks(records, per_shard)):
        path = out / f"shard-{k:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for meta, audio in chunk:
                add_member(tf, f"{meta['id']}{audio.suffix.lower()}", audio.read_bytes())
                add_member(tf, f"{meta['id']}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        shards.append(path)
    return shards


def _table(chunk):
    import pyarrow as pa

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {k: [meta[k] for meta, _ in chunk] for k in META}
    columns["duration"] = pa.array(columns["duration"], pa.float64())
    columns["audio"] = pa.array([{"bytes": audio.read_bytes(), "path": audio.name} for _, audio in chunk],
                                audio_type)
    return pa.table(columns)


def to_parquet(records, out: Path, per_shard: int, row_group_size: int = 100) -> list[Path]:
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, chunk in enumerate(_chunks(records, per_shard)):
        path = out / f"data-{k:06d}.parquet"
        pq.write_table(_table(chunk), path, row_group_size=row_group_size)
        files.append(path)
    return files


def to_arrow(records, out: Path, per_shard: int) -> list[Path]:
    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(records, per_shard)
    files = []
    for k, chunk in enumerate(chunks):
        path = out / f"data-{k:05d}-of-{len(chunks):05d}.arrow"
        table = _table(chunk)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=100)
        files.append(path)
    (out / "state.json").write_text(json.dumps({"_data_files": [{"filename": p.name} for p in files]},
                                               indent=2))
    features = {k: {"dtype": "float64" if k == "duration" else "string", "_type": "Value"} for k in META}
    features["audio"] = {"_type": "Audio"}
    (out / "dataset_info.json").write_text(json.dumps({"features": features}, indent=2))
    return files


def lhotse_recording(id_: str, audio: Path) -> dict:
    import soundfile as sf

    info = sf.info(str(audio))
    return {"id": id_, "sources": [{"type": "file", "channels": list(range(info.channels)),
                                    "source": str(audio.resolve())}],
            "sampling_rate": info.samplerate, "num_samples": info.frames,
            "duration": info.frames / info.samplerate}


def lhotse_supervision(meta: dict, recording: dict) -> dict:
    channels = recording["sources"][0]["channels"]
    sup = {"id": meta["id"], "recording_id": recording["id"], "start": 0.0,
           "duration": recording["duration"], "channel": channels if len(channels) > 1 else 0,
           "text": meta["text"]}
    for key in ("speaker", "language"):
        if meta[key]:
            sup[key] = meta[key]
    return sup


def write_jsonl_gz(path: Path, objs) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for obj in objs:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")


def to_lhotse(records, out: Path, cuts: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    recs = [lhotse_recording(meta["id"], audio) for meta, audio in records]
    sups = [lhotse_supervision(meta, rec) for (meta, _), rec in zip(records, recs)]
    if cuts:
        path = out / "cuts.jsonl.gz"
        write_jsonl_gz(path, ({"id": rec["id"], "start": 0.0, "duration": rec["duration"],
                               "channel": sup["channel"], "supervisions": [sup], "recording": rec,
                               "type": "MonoCut"} for rec, sup in zip(recs, sups)))
        return [path]
    write_jsonl_gz(out / "recordings.jsonl.gz", recs)
    write_jsonl_gz(out / "supervisions.jsonl.gz", sups)
    return [out / "recordings.jsonl.gz", out / "supervisions.jsonl.gz"]


def repack(manifest: Path, out: Path, kind: str, per_shard: int = 1000) -> tuple[list[Path], int]:
    """Write `manifest`'s corpus as `kind` under `out`; -> (files written, records skipped)."""
    records, skipped = loose_records(manifest)
    if kind == "tar":
        return to_tar(records, out, per_shard), skipped
    if kind == "parquet":
        return to_parquet(records, out, per_shard), skipped
    if kind == "arrow":
        return to_arrow(records, out, per_shard), skipped
    if kind in ("lhotse", "lhotse-cuts"):
        return to_lhotse(records, out, cuts=kind == "lhotse-cuts"), skipped
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", choices=KINDS, required=True)
    ap.add_argument("--per-shard", type=int, default=1000, help="records per tar shard or table file")
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    files, skipped = repack(args.manifest, args.out, args.to, args.per_shard)
    print(f"wrote {len(files)} file(s) under {args.out}; {skipped} record(s) skipped")


if __name__ == "__main__":
    main()
