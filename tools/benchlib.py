"""What every benchmark needs: the machine, the load others put on it, memory peaks, random-weight
checkpoints and synthetic corpora."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from make_sample import SENTENCES, synthetic_voice  # noqa: E402

from preprocess.models.bundle import ModelBundle, ModelPaths  # noqa: E402

RATES = (16000, 22050, 24000, 44100, 48000)
MIB = 1 << 20


def commit_gaps(commits: list[float], t_start: float) -> dict:
    """Seconds from the start to the first commit and between commits: what a kill can cost."""
    if not commits:
        return {"commits": 0, "first_seconds": None, "median_seconds": None, "max_seconds": None}
    gaps = np.diff(commits) if len(commits) > 1 else np.array([0.0])
    return {"commits": len(commits), "first_seconds": round(commits[0] - t_start, 3),
            "median_seconds": round(float(np.median(gaps)), 3), "max_seconds": round(float(gaps.max()), 3)}


# -- machine and load -----------------------------------------------------------------------

def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_gib": None, "gpu": None, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / (1 << 30), 1)
        info["cuda"] = torch.version.cuda
    return info


def _host_cpu_busy_seconds() -> float | None:
    """CPU seconds all processes of the host have used (/proc/stat), for the load estimate."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class HostLoad:
    """How much of the host's CPU others used while we ran: host busy - ours (ours includes
    reaped children, i.e. the CPU workers once the pool has ended)."""

    def __init__(self):
        self.t0, self.host0, self.own0 = time.perf_counter(), _host_cpu_busy_seconds(), _own_cpu_seconds()
        self.load0 = os.getloadavg()

    def report(self) -> dict:
        wall = time.perf_counter() - self.t0
        host, own = _host_cpu_busy_seconds(), _own_cpu_seconds() - self.own0
        out = {"loadavg_start": [round(x, 2) for x in self.load0],
               "loadavg_end": [round(x, 2) for x in os.getloadavg()],
               "own_cpu_seconds": round(own, 1), "wall_seconds": round(wall, 1)}
        if host is not None and self.host0 is not None:
            others = max(0.0, host - self.host0 - own)
            out.update(others_cpu_seconds=round(others, 1),
                       others_cores_busy=round(others / wall, 2) if wall else 0.0)
        return out


class TreeRss(threading.Thread):
    """Samples the summed resident memory of this process and all its descendants (Linux /proc).
    getrusage gives exact peaks of this process and of the largest single child; this gives
    the peak of their sum, to sampling accuracy."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval, self.peak, self._halt = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> int:
        parent, rss = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                rss[int(entry.name)] = int(Path(entry.path, "statm").read_text().split()[1]) * self.page
            except (OSError, ValueError, IndexError):
                continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier += kids
        return sum(rss.get(p, 0) for p in tree)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def peak_rss_mib() -> dict:
    # ru_maxrss is KiB on Linux; the children figure is the largest single reaped descendant
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(me), "largest_child": round(kids)}


# -- inputs ---------------------------------------------------------------------------------

def ensure_models(models_dir: Path, size: str, seed: int) -> tuple[Path, bool]:
    """Reuse checkpoints in `models_dir`, or make them there (in a child process, so that the
    making does not count in this process's peak memory)."""
    if (models_dir / "config.yaml").is_file():
        made = models_dir / "MADE_BY.json"
        if made.is_file() and json.loads(made.read_text()).get("size") != size:
            raise SystemExit(f"{models_dir} holds checkpoints of another --size ({made.read_text().strip()})")
        return models_dir, False
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_checkpoints.py"), str(models_dir),
                    "--size", size, "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    return models_dir, True


def model_paths(models_dir: Path) -> ModelPaths:
    return ModelPaths.resolve(models_dir / "config.yaml", w2v_bert=models_dir / "w2v-bert-2.0",
                              semantic_codec=models_dir / "semantic_codec" / "model.safetensors")


def draw_durations(count: int, min_seconds: float, max_seconds: float, seed: int = 0,
                   spread: str = "uniform") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if spread == "log-uniform":
        return np.exp(rng.uniform(math.log(min_seconds), math.log(max_seconds), count))
    return rng.uniform(min_seconds, max_seconds, count)


def generate_corpus(out: Path, count: int, min_seconds: float, max_seconds: float, seed: int = 0,
                    spread: str = "uniform") -> tuple[Path, float]:
    """Synthetic utterances with durations spread between the bounds -> (manifest, audio seconds)."""
    durations = draw_durations(count, min_seconds, max_seconds, seed, spread)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    for i, seconds in enumerate(durations):
        lang, _, sentence = SENTENCES[i % len(SENTENCES)]
        rate = RATES[i % len(RATES)]
        n = int(round(seconds * rate))
        voice = synthetic_voice("x" * 150, seed * 100003 + i, rate)  # 12 s, tiled to length
        name = f"audio/bench_{i:05d}.wav"
        sf.write(out / name, np.resize(voice, n), rate, subtype="PCM_16")
        # text grows with the audio, about one sentence per 4 s, as in read speech
        text = " ".join([sentence] * max(1, math.ceil(seconds / 4)))
        lines.append({"id": f"bench_{i:05d}", "text": text, "audio": name, "speaker": f"{lang}_spk{i % 3}",
                      "language": lang, "duration": round(n / rate, 3)})
        total += n / rate
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return manifest, total


def model_sizes(bundle: ModelBundle) -> dict:
    """Parameters and resident bytes (parameters + buffers) of each loaded module."""
    parts = {"w2v_bert": bundle.encoder, "standardizer": bundle.standardizer,
             "semantic_codec": bundle.codec, "conditioning_heads": bundle.heads}
    out = {}
    for name, m in parts.items():
        tensors = list(m.parameters()) + list(m.buffers())
        out[name] = {"parameters": sum(p.numel() for p in m.parameters()),
                     "bytes": sum(t.numel() * t.element_size() for t in tensors)}
    return {"parameters": sum(v["parameters"] for v in out.values()),
            "resident_bytes": sum(v["bytes"] for v in out.values()), "modules": out}


def checkpoint_parameters(paths: ModelPaths) -> dict:
    """Parameters stored in the safetensors files (whole w2v-BERT, codec with its decoder), read
    from the headers: what a loader that takes everything would hold."""
    from safetensors import safe_open

    out = {}
    files = {"w2v_bert": sorted(paths.w2v_bert.glob("*.safetensors")), "semantic_codec": [paths.semantic_codec]}
    for name, group in files.items():
        total = 0
        for path in group:
            with safe_open(str(path), "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        out[name] = total
    return out
