"""Running several datasets in one command, with models loaded once.

Each `--dataset LANG=MANIFEST[=OUT]` is its own Job (own output, hint, manifests, stats);
the model set is loaded on first use and shared, and the input files are hashed once.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .manifest import ManifestError
from .options import JobOptions
from .store.dataset import ConfigMismatch, OutputExists
from .text_cache import PreparedTextError


@dataclass
class DatasetSpec:
    language: str | None
    manifest: Path | tuple[Path, ...]
    output_dir: Path


def parse_dataset(value: str, output_root: Path) -> DatasetSpec:
    """LANG=MANIFEST[=OUT]. Split from the left once and from the right once, so an '=' inside
    the manifest path survives when OUT is given explicitly."""
    lang, sep, rest = value.partition("=")
    if not sep or not lang or not rest:
        raise ValueError(f"--dataset {value!r}: expected LANG=MANIFEST[=OUT]")
    manifest, out = rest, None
    if "=" in rest:
        head, _, tail = rest.rpartition("=")
        if not Path(rest).exists():
            manifest, out = head, tail
    output = Path(out) if out else output_root / f"{lang.lower()}_processed_data"
    return DatasetSpec(lang, Path(manifest), output)


class SharedModels:
    """Loads the model set on first use and hands the same instance to every dataset."""

    def __init__(self, opts: JobOptions):
        self.opts, self.bundle = opts, None

    def __call__(self):
        if self.bundle is None:
            from .models.bundle import ModelBundle
            self.bundle = ModelBundle.load(self.opts.models, layer=self.opts.layer,
                                           trust_checkpoint=self.opts.trust_checkpoint)
        return self.bundle


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout)


def run_datasets(base: JobOptions, specs: list[DatasetSpec], devices: list[str] | None = None,
                 strict: bool = False, echo=_print, shard: tuple[int, int] | None = None,
                 engine: str = "inprocess", ray_address: str | None = None, ray_actors: int = 0) -> int:
    """Run every dataset in turn; returns the process exit code. `shard` (K, N): run share K
    of N of each dataset into OUT/shards/KofN (executors/array.py). `engine` "ray": on a Ray
    cluster (executors/ray_engine.py), joined at `ray_address` or started here, with
    `ray_actors` device actors (0: one per GPU)."""
    from .executors.array import shard_job
    from .executors.devices import OnePerDevice, WorkerFailed
    from .executors.inprocess import InProcess
    from .models.files import UntrustedCheckpoint
    from .job import Job
    from .store.fsutil import DiskFull
    from .provenance import describe_inputs

    models = SharedModels(base)
    provenance = None
    any_rejects = False
    for spec in specs:
        opts = replace(base, manifest=spec.manifest, output_dir=spec.output_dir,
                       language=spec.language)
        try:
            if provenance is None:
                provenance = describe_inputs(opts.models, opts.tokenizer)
            if engine == "ray":
                from .executors.ray_engine import RayEngine
                executor = RayEngine(ray_address, actors=ray_actors)
            else:
                executor = OnePerDevice(devices) if devices else InProcess(models)
            if shard is None:
                job = Job(opts, provenance)
            else:
                started = shard_job(opts, provenance, shard, executor)
                if isinstance(started, str):
                    echo(started)
                    continue
                job, executor = started
            summary = job.run(executor)
        except (ConfigMismatch, OutputExists, ManifestError, PreparedTextError) as e:
            echo(f"error: {e}", err=True)
            return 2
        except UntrustedCheckpoint as e:
            echo(f"error: {e}; pass --trust-checkpoint if you do", err=True)
            return 2
        except (WorkerFailed, DiskFull) as e:
            echo(f"error: {e}", err=True)
            return 1
        except KeyboardInterrupt as e:
            echo(f"\ninterrupted: work in flight was not marked done; rerun the same command "
                 f"to resume {opts.output_dir}", err=True)
            return 128 + getattr(e, "signum", signal.SIGINT)
        echo(summary.text())
        any_rejects |= summary.stats.get("rejected", 0) > 0
    if strict and any_rejects:
        echo("error: records were rejected and --strict was given (see rejects.jsonl)", err=True)
        return 1
    return 0
