"""tools/wheelhouse.sh: argument handling and what each profile collects (--dry-run: no network).

A real bundle is built by hand (docs/GPU.md records the sizes): it downloads ~45-430 MB.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "wheelhouse.sh"


def wheelhouse(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=60)


def dry_run(tmp_path, *args):
    done = wheelhouse(str(tmp_path / "dest"), "--dry-run", *args)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "dest").exists()   # a dry run writes nothing
    lines = done.stdout.splitlines()
    start, end = lines.index("requirements:"), lines.index("commands:")
    return [x.strip() for x in lines[start + 1:end]], [x.strip() for x in lines[end + 1:]]


def declared() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


def test_full_profile_is_every_dependency_but_torch(tmp_path):
    requirements, commands = dry_run(tmp_path)
    assert requirements == [r for r in declared() if name(r) != "torch"]
    assert "wetextprocessing" in map(name, requirements)
    build, download = commands
    assert build.endswith(f"pip wheel --no-deps --wheel-dir {tmp_path / 'dest'} {ROOT}")
    assert "--only-binary=:all:" in download and f"-r {tmp_path / 'dest'}/requirements.txt" in download
    assert "--python-version" not in download and "--platform" not in download   # this interpreter


def test_gpu_check_profile_leaves_out_the_text_normaliser_and_plots(tmp_path):
    for args in (["--gpu-check"], ["--profile", "gpu-check"]):
        requirements, _ = dry_run(tmp_path, *args)
        assert requirements == [r for r in declared()
                                if name(r) not in ("torch", "wetextprocessing", "matplotlib")]
        assert any(r.startswith("transformers") for r in requirements)


def test_torch_on_request(tmp_path):
    requirements, _ = dry_run(tmp_path, "--gpu-check", "--torch", "torch==2.13.0")
    assert requirements[-1] == "torch==2.13.0"
    assert sum(name(r) == "torch" for r in requirements) == 1


def test_other_python_and_platforms_go_to_pip_download(tmp_path):
    _, (_, download) = dry_run(tmp_path, "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                               "--platform", "manylinux_2_17_x86_64")
    assert ("--only-binary=:all: --python-version 3.12 --implementation cp "
            "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -r") in download


@pytest.mark.parametrize("args, message", [
    ([], "DEST is missing"),
    (["a", "b"], "one DEST only"),
    (["a", "--profile", "tiny"], "--profile must be full or gpu-check"),
    (["a", "--python-version", "312"], "--python-version wants X.Y"),
    (["a", "--frobnicate"], "unknown option --frobnicate"),
    (["a", "--platform"], "wheelhouse.sh DEST"),   # an option without its value
])
def test_bad_arguments_are_refused_with_usage(args, message):
    done = wheelhouse(*args)
    assert done.returncode == 2
    assert message.lower() in done.stderr.lower()
    assert "bash tools/wheelhouse.sh DEST" in done.stderr   # the usage follows
