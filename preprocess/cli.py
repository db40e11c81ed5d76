"""Command line: argument parsing and messages only; the work is in the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .device_kind import device_kind
from .options import JobDefaults, JobOptions, Limits

PATH = click.Path(path_type=Path)
# Which flag provides each model file (models.files.MissingModelFile.role).
MODEL_FLAGS = {"config": "--config", "gpt_checkpoint": "--gpt-checkpoint", "w2v_stats": "--w2v-stats",
               "w2v_bert": "--w2v-bert", "semantic_codec": "--semantic-codec"}


def fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _model_options(f):
    opts = [
        click.option("--config", "config", type=PATH, required=True,
                     help="IndexTTS2 config.yaml (its gpt and semantic_codec sections are used)."),
        click.option("--tokenizer", type=PATH, required=True, help="SentencePiece bpe.model."),
        click.option("--gpt-checkpoint", type=PATH, help="gpt.pth [default: gpt_checkpoint beside the config]."),
        click.option("--w2v-stats", type=PATH, help="wav2vec2bert_stats.pt [default: w2v_stat beside the config]."),
        click.option("--w2v-bert", type=PATH,
                     help="Local facebook/w2v-bert-2.0 directory [default: the local Hugging Face cache]."),
        click.option("--semantic-codec", type=PATH,
                     help="MaskGCT semantic_codec/model.safetensors [default: the local Hugging Face cache]."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--manifest", type=PATH, multiple=True,
              help="The corpus: a JSONL (or .jsonl.gz) or CSV manifest with id, text, audio[, speaker, "
                   "language, duration]; WebDataset tar shards (a folder or several --manifest); a "
                   "Hugging Face dataset folder, Parquet or Arrow files; Lhotse cuts, or recordings "
                   "and supervisions manifests (or their folder).")
@click.option("--input-format", type=click.Choice(["auto", "jsonl", "csv", "tar", "parquet", "lhotse"]),
              default="auto", show_default=True, help="What --manifest is; auto: from its names and contents.")
@click.option("--field", "fields", multiple=True, metavar="NAME=KEY",
              help="Read our field NAME (id, text, audio, speaker, language, duration) from the "
                   "source's KEY (a column, JSON key, 'custom.x' nested key; for tar shards audio=EXTENSION); "
                   "repeatable.")
@click.option("--output-dir", type=PATH, help="Where the feature store, manifests and stats go.")
@click.option("--dataset", "datasets", multiple=True, metavar="LANG=MANIFEST[=OUT]",
              help="Several datasets in one run (models load once); repeatable. Uses --output-root.")
@click.option("--output-root", type=PATH, default=Path("."), show_default=True,
              help="Parent of <lang>_processed_data for --dataset entries without OUT.")
@_model_options
@click.option("--language", help="Normaliser hint for every record [default: each record's own 'language'].")
@click.option("--job-config", type=PATH,
              help="A copy of configs/job.yaml with other defaults (layer, limits, val ratio, hub ids).")
@click.option("--layer", type=int, help="w2v-BERT hidden state to use [default: 17, from the job config].")
@click.option("--val-ratio", type=float, help="Share of utterances in the val split [default: 0.01].")
@click.option("--batch-size", type=int, default=0, show_default=True,
              help="Utterances per batch; 0 = automatic: the fastest budget measured on the first "
                   "batches, under the device's memory.")
@click.option("--workers", type=int, default=0, show_default=True, help="CPU worker processes; 0 = automatic.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--devices", help="Several GPUs on this machine: 'all' or a list like 0,1,3 (one worker each).")
@click.option("--shard", "shard", metavar="K/N",
              help="Process share K of N (0-based) into OUT/shards/KofN: N independent jobs (a Slurm "
                   "array) with the same --output-dir on a shared file system, then "
                   "'preprocess merge OUT'. The partition is duration-balanced and depends on the "
                   "manifest alone.")
@click.option("--engine", type=click.Choice(["inprocess", "ray"]), default="inprocess", show_default=True,
              help="ray: CPU preparation as Ray tasks over a cluster, the models in one actor per GPU "
                   "(pip install -e \".[ray]\").")
@click.option("--ray-address", help="--engine ray: a running cluster to join [default: start a local one].")
@click.option("--ray-actors", type=int, default=0, show_default=True,
              help="--engine ray: device actors; 0 = one per GPU of the cluster (one CPU actor per node without).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--max-samples", type=int, help="Process at most this many new utterances in this run.")
@click.option("--min-duration", type=float, help=f"Seconds [default: {Limits.min_duration}].")
@click.option("--max-duration", type=float, help=f"Seconds [default: {Limits.max_duration}].")
@click.option("--max-text-len", type=int, help=f"[default: {Limits.max_text_len}, the trainer's limit].")
@click.option("--max-code-len", type=int, help=f"[default: {Limits.max_code_len}, the trainer's limit].")
@click.option("--resample", type=click.Choice(["reference", "direct"]), default="reference", show_default=True,
              help="reference: native -> 24 kHz -> 16 kHz exactly as the reference (compatible codes); "
                   "direct: one step to 16 kHz.")
@click.option("--format", "fmt", type=click.Choice(["npy", "zarr"]), default="npy", show_default=True,
              help="npy: the trainer's layout; zarr: a packed store (export with 'preprocess export').")
@click.option("--latent-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage dtype of condition and emo_vec in the zarr format.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Load a gpt.pth that pickles more than tensors with the full unpickler, which can "
                   "run code stored in the file. Only for checkpoints you trust.")
@click.option("--prepared-text", type=PATH,
              help="Text ids made beforehand by 'preprocess prepare-text' with the same tokenizer "
                   "and --language: the CPU workers take them instead of normalising (same outputs).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any record was rejected.")
@click.option("--force", is_flag=True, help="Replace outputs made with other settings instead of refusing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def preprocess_data(manifest, input_format, fields, output_dir, datasets, output_root, config,
                    tokenizer, gpt_checkpoint, w2v_stats, w2v_bert, semantic_codec, language, job_config, layer, val_ratio,
                    batch_size, workers,
                    device, devices, shard, engine, ray_address, ray_actors, precision, max_samples,
                    min_duration, max_duration, max_text_len, max_code_len, resample, fmt, latent_dtype,
                    trust_checkpoint, prepared_text, strict, force, quiet):
    """Turn a speech corpus manifest into IndexTTS2 GPT training features.

    Writes text ids, semantic codes, conditioning latents and emotion vectors per utterance,
    train/val manifests the trainer reads, stats.json and rejects.jsonl. Rerun the same
    command to resume after an interruption.
    """
    from .models.files import MissingModelFile, ModelPaths
    from .launch import DatasetSpec, parse_dataset, run_datasets

    if datasets and (manifest or output_dir):
        fail("use either --manifest/--output-dir or --dataset, not both")
    if not datasets and not (manifest and output_dir):
        fail("--manifest and --output-dir are required (or one --dataset LANG=MANIFEST[=OUT] per dataset)")
    if not tokenizer.is_file():
        fail(f"tokenizer {tokenizer} not found (pass the SentencePiece bpe.model with --tokenizer)")
    if prepared_text is not None:
        if datasets:
            fail("--prepared-text goes with one --manifest, not with --dataset")
        if not prepared_text.is_file():
            fail(f"prepared text {prepared_text} not found (make it with preprocess prepare-text)")
    from .sources import parse_fields
    try:
        field_map = parse_fields(fields)
    except ValueError as e:
        fail(str(e))
    try:
        defaults = JobDefaults.load(job_config)
    except ValueError as e:
        fail(str(e))
    if engine == "ray" and devices:
        fail("--devices is for the in-process engine; with --engine ray every GPU of the cluster gets an actor")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            fail('--engine ray needs Ray: pip install -e ".[ray]"')
    from .partition import parse_shard
    try:
        shard = parse_shard(shard) if shard else None
    except ValueError as e:
        fail(str(e))
    from .executors.devices import parse_devices
    try:
        device_kind(device)
        device_list = parse_devices(devices) if devices else None
    except (RuntimeError, ValueError) as e:
        fail(str(e))
    try:
        models = ModelPaths.resolve(config, gpt_checkpoint, w2v_stats, w2v_bert, semantic_codec,
                                    w2v_bert_hub_id=defaults.w2v_bert_hub_id,
                                    semantic_codec_hub_id=defaults.semantic_codec_hub_id)
    except MissingModelFile as e:
        fail(f"{e}; pass it with {MODEL_FLAGS[e.role]}")
    except ValueError as e:
        fail(str(e))
    d = defaults.limits
    limits = Limits(d.min_duration if min_duration is None else min_duration,
                    d.max_duration if max_duration is None else max_duration,
                    d.max_text_len if max_text_len is None else max_text_len,
                    d.max_code_len if max_code_len is None else max_code_len)
    try:
        specs = [parse_dataset(d, output_root) for d in datasets] if datasets else \
            [DatasetSpec(language, manifest[0] if len(manifest) == 1 else tuple(manifest), output_dir)]
    except ValueError as e:
        fail(str(e))
    for spec in specs:
        for path in (spec.manifest if isinstance(spec.manifest, tuple) else (spec.manifest,)):
            if not path.exists():
                fail(f"manifest {path} not found")
    base = JobOptions(
        manifest=specs[0].manifest, output_dir=specs[0].output_dir, models=models, tokenizer=tokenizer,
        language=language, val_ratio=defaults.val_ratio if val_ratio is None else val_ratio,
        batch_size=batch_size, workers=workers, device=device, precision=precision,
        max_samples=max_samples, limits=limits, resample=resample, format=fmt,
        latent_dtype=latent_dtype, layer=defaults.layer if layer is None else layer, force=force,
        progress=not quiet, trust_checkpoint=trust_checkpoint, input_format=input_format,
        fields=tuple(field_map.items()), prepared_text=prepared_text)
    code = run_datasets(base, specs, devices=device_list, strict=strict, echo=click.echo, shard=shard,
                        engine=engine, ray_address=ray_address, ray_actors=ray_actors)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Tools around a preprocessed output directory."""


@main.command()
@click.argument("out", type=PATH)
@click.option("--repair", is_flag=True,
              help="Withdraw every damaged record from the manifests and the progress file, so "
                   "that rerunning the same preprocess-data command recomputes exactly those.")
def verify(out, repair):
    """Check every manifest line of OUT as the trainer would read it; non-zero exit on problems."""
    from .repair import repair_output
    from .store.dataset import ConfigMismatch, OutputExists
    from .verify import RunInProgress, verify_output

    try:
        if not repair:
            report = verify_output(out)
            click.echo(report.render())
            sys.exit(0 if report.ok else 1)
        report, fixed = repair_output(out)
    except (RunInProgress, OutputExists, ConfigMismatch, FileNotFoundError) as e:
        fail(str(e))
    click.echo(report.render())
    click.echo(fixed.render())
    sys.exit(1 if fixed.left else 0)


@main.command()
@click.argument("outs", nargs=-1, required=True, type=PATH)
@click.option("--pairs-per-target", type=int, default=2, show_default=True)
@click.option("--max-pairs", type=int, default=0, show_default=True, help="Cap per manifest; 0 = none.")
@click.option("--min-text-len", type=int, default=1, show_default=True)
@click.option("--min-code-len", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=2025, show_default=True)
@click.option("--speaker-regex", help="Speaker from the audio file name when 'speaker' is empty "
                                       "(first group, or the whole match).")
@click.option("--force", is_flag=True, help="Overwrite existing pair files.")
def pairs(outs, pairs_per_target, max_pairs, min_text_len, min_code_len, seed, speaker_regex, force):
    """Write gpt_pairs_train.jsonl / gpt_pairs_val.jsonl (the trainer's input) in each OUT."""
    from .pairs import PairError, build_pairs

    try:
        report = build_pairs(list(outs), pairs_per_target=pairs_per_target, max_pairs=max_pairs,
                             min_text_len=min_text_len, min_code_len=min_code_len, seed=seed,
                             speaker_regex=speaker_regex, force=force)
    except PairError as e:
        fail(str(e))
    for m in report.manifests:
        click.echo(f"{m.path}: {m.pairs_written} pairs from {m.valid_records} records, "
                   f"{m.speakers} speakers ({m.single_utterance_speakers} with one utterance), "
                   f"{m.skipped_records} skipped")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if report.total_pairs == 0:
        fail("no pairs at all: every speaker needs at least two utterances in a split", 1)


@main.command()
@click.argument("out", type=PATH)
@click.option("--json", "json_path", type=PATH, help="[default: OUT/dataset_stats.json]")
@click.option("--png", "png_path", type=PATH, help="[default: OUT/dataset_stats.png]")
def stats(out, json_path, png_path):
    """Hours per split, language and speaker; length distributions (table, JSON and PNG)."""
    from .stats_report import format_table, write_stats_report
    from .store.dataset import run_in_progress

    if run_in_progress(out):
        click.echo(f"note: a run is writing to {out} now; these figures cover what it has "
                   "finished so far", err=True)
    result = write_stats_report(out, json_path or out / "dataset_stats.json",
                                png_path or out / "dataset_stats.png")
    click.echo(format_table(result))


@main.command()
@click.argument("out", type=PATH)
@click.option("--manifest", type=PATH,
              help="The manifest the --shard jobs read, where it is not at the path they recorded.")
def merge(out, manifest):
    """Adopt the shards in OUT/shards: those of --shard K/N jobs, or those an interrupted
    multi-GPU run left.

    Every finished shard is adopted; each missing, unfinished or running one, and each made
    with other settings or another partition, is named, and the exit status is 1 until all
    of them are in OUT.
    """
    from .executors.array import merge_output
    from .store.dataset import ConfigMismatch, OutputExists
    from .store.fsutil import is_disk_full
    from .store.shards import merge_disk_full_message

    try:
        report = merge_output(out, manifest)
    except (ConfigMismatch, OutputExists) as e:
        fail(str(e))
    except OSError as e:
        if not is_disk_full(e):
            raise
        fail(merge_disk_full_message(out), 1)
    for line in report.lines():
        click.echo(line)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("out", type=PATH)
@click.option("--to", "fmt", type=click.Choice(["npy"]), default="npy", show_default=True)
@click.argument("dest", type=PATH)
def export(out, fmt, dest):
    """Write the trainer's npy layout in DEST from the output OUT (e.g. a packed, zarr one)."""
    from .store.export import export_npy

    try:
        result = export_npy(out, dest)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    click.echo(f"exported {result['utterances']} utterances to {dest} "
               f"({result['written']} written, {result['skipped']} already there)")


@main.command("text-ids")
@click.argument("out", type=PATH)
@click.option("--tokenizer", type=PATH, required=True, help="The new SentencePiece bpe.model.")
@click.option("--language", help="Normaliser hint for every record [default: the original run's "
                                 "--language, else each record's own 'language'].")
@click.option("--workers", type=int, default=1, show_default=True, help="Tokenizer processes.")
@click.option("--force", is_flag=True, help="Regenerate even if OUT already uses this tokenizer and language.")
@click.option("--strict", is_flag=True, help="Exit 1 if any record was rejected.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def text_ids(out, tokenizer, language, workers, force, strict, quiet):
    """Re-tokenise every record of OUT with another tokenizer, in place.

    Text ids and text_len change; codes and latents stay as they are. Records whose new ids are
    empty or too long become rejects. stats.json and the progress file then name the new
    tokenizer, so preprocess-data with it resumes OUT. Rerun the same command after an
    interruption.
    """
    from .store.dataset import ConfigMismatch, OutputExists
    from .text_ids import TextIdsError, regenerate_text_ids

    if not tokenizer.is_file():
        fail(f"tokenizer {tokenizer} not found")
    try:
        summary = regenerate_text_ids(out, tokenizer, language, progress=not quiet, force=force,
                                      workers=workers)
    except (TextIdsError, ConfigMismatch, OutputExists) as e:
        fail(str(e))
    click.echo(summary.text())
    sys.exit(1 if strict and summary.rejected else 0)


@main.command("prepare-text")
@click.option("--manifest", type=PATH, multiple=True, required=True,
              help="The corpus, as preprocess-data --manifest takes it.")
@click.option("--input-format", type=click.Choice(["auto", "jsonl", "csv", "tar", "parquet", "lhotse"]),
              default="auto", show_default=True, help="What --manifest is; auto: from its names and contents.")
@click.option("--field", "fields", multiple=True, metavar="NAME=KEY",
              help="As preprocess-data --field; repeatable.")
@click.option("--tokenizer", type=PATH, required=True, help="The job's SentencePiece bpe.model.")
@click.option("--language", help="The job's --language [default: each record's own 'language'].")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Worker processes; 0 = one per available core.")
@click.option("--out", type=PATH, required=True,
              help="The prepared-text file (JSONL) to write or complete; pass it to preprocess-data "
                   "--prepared-text.")
@click.option("--force", is_flag=True, help="Start OUT afresh (needed when it was made with other settings).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_text_command(manifest, input_format, fields, tokenizer, language, workers, out, force, quiet):
    """Clean, normalise and tokenise the text of every record ahead of preprocess-data.

    The text half of the CPU stage (normalisation is most of its work), for example on CPU-only
    machines before the GPU job. preprocess-data --prepared-text OUT with the same tokenizer and
    --language then takes the ids from OUT instead of normalising; its outputs are the same.
    Rerun the same command after an interruption: it continues. Exit 1 if some records failed.
    """
    from .manifest import ManifestError
    from .sources import parse_fields
    from .text_cache import PreparedTextError
    from .text_pass import prepare_text

    if not tokenizer.is_file():
        fail(f"tokenizer {tokenizer} not found")
    for path in manifest:
        if not path.exists():
            fail(f"manifest {path} not found")
    try:
        summary = prepare_text(manifest[0] if len(manifest) == 1 else tuple(manifest), tokenizer,
                               out, language, workers=workers, input_format=input_format,
                               fields=parse_fields(fields), force=force, progress=not quiet)
    except (ValueError, ManifestError, PreparedTextError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted: what was written to {out} is kept; rerun the same command to continue", 130)
    click.echo(summary.text())
    sys.exit(1 if summary.failed else 0)


main.add_command(preprocess_data, name="data")
