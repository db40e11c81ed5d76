"""`tools/bench.py --mode reference`: our job beside the old scripts' way, same corpus, one run.

Variants, each run as its own process per manifest (as a user runs one command per dataset),
rounds interleaved so that load drifts touch every variant alike:

  default   `preprocess-data` with its defaults (automatic batch budget, automatic threads)
  bs1       `preprocess-data --batch-size 1`
  loop      a plain sequential loop over the same model code, the reference scripts' way: per
            utterance clean, normalise and tokenise the text, decode, resample, fbank, run the
            models on a batch of one, save four .npy files; torch's default threads
  scripts   the same loop with the scripts' own model calls where they differ from ours: the full
            24-layer w2v-BERT keeping every hidden state, transformers' feature extractor (a
            per-frame Python loop), WeTextProcessing without the fast path, the whole gpt.pth
            read; the closest this repository comes to timing the scripts themselves
  threads=W,M,N   (optional, `--threads-variant`) the job with W CPU workers, M model threads and
            worker niceness N instead of the automatic choice

The report gives each variant's wall seconds summed over the manifests (model loading, hashing
and start-up included: that is what a user waits for), audio seconds per second, and its speed
relative to `loop` and to `scripts`; and checks that the outputs agree with `loop`'s (text ids
and codes identical, latents within 1e-4; `scripts` differs from the others by its fbank, within
about 1e-5, which can move a code).

    python tools/bench.py --mode reference --models DIR --generate 40 --min-seconds 1.5 \
        --max-seconds 12 --spread log-uniform [--rounds 2] [--threads-variant 1,1,0]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import ROOT, HostLoad, ensure_models, generate_corpus, model_paths

TOOLS = Path(__file__).resolve().parent


def split_by_language(manifest: Path, out: Path) -> list[Path]:
    """One manifest per language (audio paths made absolute), like per-language dataset runs."""
    groups: dict[str, list[dict]] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec["audio"] = str((manifest.parent / rec["audio"]).resolve())
        groups.setdefault(rec["language"], []).append(rec)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang, recs in sorted(groups.items()):
        path = out / f"{lang}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        paths.append(path)
    return paths


def model_args(models: Path) -> list[str]:
    return ["--config", str(models / "config.yaml"), "--tokenizer", str(models / "bpe.model"),
            "--w2v-bert", str(models / "w2v-bert-2.0"),
            "--semantic-codec", str(models / "semantic_codec" / "model.safetensors")]


def command(variant: str, manifest: Path, out: Path, models: Path) -> list[str]:
    if variant == "default":
        return [sys.executable, "-m", "preprocess", "data", "--manifest", str(manifest),
                "--output-dir", str(out), *model_args(models), "--device", "cpu", "--quiet"]
    if variant == "bs1":
        return [*command("default", manifest, out, models), "--batch-size", "1"]
    if variant in ("loop", "scripts"):
        return [sys.executable, str(Path(__file__).resolve()), variant, str(manifest), str(out), str(models)]
    if variant.startswith("threads="):
        return [sys.executable, str(Path(__file__).resolve()), "threads", variant.split("=", 1)[1],
                str(manifest), str(out), str(models)]
    raise ValueError(variant)


def loop_over(manifest: Path, out: Path, models: Path, bundle, model_inputs) -> None:
    """One utterance at a time, in order, as the scripts do: text ids, decode, resample to 16 kHz,
    `model_inputs(wave16)` -> (features, frames, lengths), the models on a batch of one, four
    .npy files."""
    from preprocess.audio import load_audio, to_16k
    from preprocess.manifest import Record, read_manifest, resolve_audio
    from preprocess.text import TextTokenizer, clean_text

    tokenizer = TextTokenizer(models / "bpe.model")
    for name in ("text_ids", "codes", "condition", "emo_vec"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for rec in read_manifest(manifest):
        if not isinstance(rec, Record):
            continue
        ids = np.asarray(tokenizer.encode(clean_text(rec.text), rec.language), dtype=np.int32)
        wave, sr = load_audio(resolve_audio(rec.audio, manifest.parent))
        result = bundle.run(*model_inputs(to_16k(wave, sr, "reference")))
        for name, array in (("text_ids", ids), ("codes", result.codes[0].astype(np.int32)),
                            ("condition", result.condition[0]), ("emo_vec", result.emo_vec[0])):
            np.save(out / name / f"{rec.id}.npy", array)


def sequential_loop(manifest: Path, out: Path, models: Path) -> None:
    """The reference scripts' way over our model code."""
    sys.path.insert(0, str(ROOT))
    from preprocess.frontend import collate, fbank, frame_counts, stack_frames
    from preprocess.models.bundle import ModelBundle

    def model_inputs(wave16):
        _, _, valid = frame_counts(len(wave16))
        return collate([stack_frames(fbank(wave16))], [valid])

    loop_over(manifest, out, models, ModelBundle.load(model_paths(models)), model_inputs)


def scripts_loop(manifest: Path, out: Path, models: Path) -> None:
    """`sequential_loop` with the scripts' own model calls: the full w2v-BERT (24 layers, every
    hidden state kept, `hidden_states[17]` taken), features from transformers'
    SeamlessM4TFeatureExtractor (its per-frame Python loop), WeTextProcessing alone (no fast
    path), and the whole gpt.pth read although six prefixes are used."""
    os.environ["PREPROCESS_TN_FAST"] = "0"
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    from preprocess.models.bundle import ModelBundle

    class AllHiddenStates(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, features, mask):
            return self.model(input_features=features, attention_mask=mask,
                              output_hidden_states=True).hidden_states[17]

    paths = model_paths(models)
    bundle = ModelBundle.load(paths, layer=0)  # standardiser, codec, heads; the encoder is replaced
    bundle.encoder = AllHiddenStates(Wav2Vec2BertModel.from_pretrained(paths.w2v_bert, attn_implementation="eager").eval())
    torch.load(paths.gpt_checkpoint, map_location="cpu", weights_only=True)
    extractor = SeamlessM4TFeatureExtractor.from_pretrained(paths.w2v_bert)

    def model_inputs(wave16):
        inputs = extractor(wave16, sampling_rate=16000, return_tensors="pt")
        mask = inputs["attention_mask"]
        return inputs["input_features"], torch.tensor([mask.shape[1]]), mask.sum(1)

    loop_over(manifest, out, models, bundle, model_inputs)


def threads_job(spec: str, manifest: Path, out: Path, models: Path) -> None:
    """The job with a given thread setting: 'workers,model_threads,niceness'."""
    sys.path.insert(0, str(ROOT))
    from preprocess.executors.inprocess import InProcess, Threads
    from preprocess.job import Job
    from preprocess.options import JobOptions

    workers, model, nice = (int(x) for x in spec.split(","))
    opts = JobOptions(manifest=manifest, output_dir=out, models=model_paths(models), tokenizer=models / "bpe.model",
                      device="cpu", progress=False)
    Job(opts).run(InProcess(threads=Threads(workers, model, nice)))


def outputs_of(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """id -> feature -> array, for a job output (manifest paths) or a loop output (by name)."""
    found: dict[str, dict[str, np.ndarray]] = {}
    manifests = [out / "train_manifest.jsonl", out / "val_manifest.jsonl"]
    if any(m.exists() for m in manifests):
        for m in manifests:
            for line in (m.read_text(encoding="utf-8").splitlines() if m.exists() else []):
                rec = json.loads(line)
                found[rec["id"]] = {k[:-5]: np.load(out / rec[k]) for k in
                                    ("text_ids_path", "codes_path", "condition_path", "emo_vec_path")}
        return found
    for path in sorted((out / "codes").glob("*.npy")):
        found[path.stem] = {k: np.load(out / k / path.name) for k in ("text_ids", "codes", "condition", "emo_vec")}
    return found


def agreement(a: dict, b: dict) -> dict:
    same_ids = sorted(a) == sorted(b)
    ids_equal = codes_equal = True
    latent = 0.0
    same_codes = all_codes = 0
    for key in set(a) & set(b):
        ids_equal &= np.array_equal(a[key]["text_ids"], b[key]["text_ids"])
        codes_equal &= np.array_equal(a[key]["codes"], b[key]["codes"])
        if a[key]["codes"].shape == b[key]["codes"].shape:
            same_codes += int((a[key]["codes"] == b[key]["codes"]).sum())
        all_codes += b[key]["codes"].size
        for name in ("condition", "emo_vec"):
            latent = max(latent, float(np.abs(a[key][name].astype(np.float64) - b[key][name]).max()))
    return {"same_utterances": same_ids, "text_ids_equal": bool(ids_equal),
            "codes_equal": bool(codes_equal), "codes_equal_share": round(same_codes / max(all_codes, 1), 5),
            "latent_max_abs_diff": latent}


def reference_benchmark(args) -> dict:
    load = HostLoad()
    work = args.out or Path(tempfile.mkdtemp(prefix="preprocess-bench-ref-"))
    models_dir = args.models or Path(tempfile.gettempdir()) / f"preprocess-bench-models-{args.size}"
    try:
        models_dir, _ = ensure_models(models_dir, args.size, args.seed)
        if args.manifest is not None:
            manifests = [args.manifest]
            audio = None
        else:
            shutil.rmtree(work / "corpus", ignore_errors=True)
            whole, audio = generate_corpus(work / "corpus", args.generate, args.min_seconds,
                                           args.max_seconds, args.seed, args.spread)
            manifests = split_by_language(whole, work / "corpus" / "by_language")
        variants = ["default", "bs1", "loop", "scripts", *(f"threads={v}" for v in args.threads_variant or [])]
        # the hash cache and the compiled grammar are per-user, made once: warm them outside the timing
        warm = work / "warm"
        subprocess.run(command("bs1", manifests[0], warm, models_dir), check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        walls: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for variant in order:
                total = 0.0
                for m in manifests:
                    out = work / "runs" / f"{variant}-{r}" / m.stem
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    subprocess.run(command(variant, m, out, models_dir), check=True,
                                   stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                    total += time.perf_counter() - t0
                walls[variant].append(round(total, 2))
        if audio is None:
            audio = sum(json.loads(x)["duration"] for m in manifests
                        for x in m.read_text(encoding="utf-8").splitlines())
        best = {v: min(w) for v, w in walls.items()}
        report = {"manifests": [m.name for m in manifests], "audio_seconds": round(audio, 2),
                  "rounds": args.rounds, "wall_seconds": walls, "best_wall_seconds": best,
                  "audio_seconds_per_second": {v: round(audio / w, 3) for v, w in best.items()},
                  "speed_vs_loop": {v: round(best["loop"] / w, 3) for v, w in best.items()},
                  "speed_vs_scripts": {v: round(best["scripts"] / w, 3) for v, w in best.items()}}
        loop = {k: v for m in manifests for k, v in outputs_of(work / "runs" / "loop-0" / m.stem).items()}
        report["agreement_with_loop"] = {
            v: agreement({k: x for m in manifests for k, x in outputs_of(work / "runs" / f"{v}-0" / m.stem).items()}, loop)
            for v in variants if v != "loop"}
        budgets = {}
        for m in manifests:
            stats = work / "runs" / "default-0" / m.stem / "stats.json"
            budgets[m.stem] = json.loads(stats.read_text())["last_run"].get("batch_budget")
        report["default_batch_budget"] = budgets
        report["load"] = load.report()
        return {"reference": report}
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    what = sys.argv[1]
    if what in ("loop", "scripts"):
        {"loop": sequential_loop, "scripts": scripts_loop}[what](Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif what == "threads":
        threads_job(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} loop|scripts|threads ... (run through tools/bench.py --mode reference)")
