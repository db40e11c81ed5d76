"""The import graph: no cycles between the package's modules, the store below everything that
uses it, and the commands that read a finished output importing no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "preprocess"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at module level or inside functions alike
    (a lazy import is still a dependency)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in candidates if c in modules and c != name)
        graph[name] = deps
    return graph


def unit(module: str) -> str:
    """preprocess.store.zarr.writer -> preprocess.store: the package's top-level parts."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_the_package_parts():
    units: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        units.setdefault(unit(module), set()).update(unit(d) for d in deps if unit(d) != unit(module))

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in units.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    cycles = sorted(f"{a} -> {b}" for a in units for b in units[a] if a in reachable(b))
    assert not cycles


def test_the_store_imports_only_what_lies_below_it():
    allowed = {"preprocess", "preprocess.contract", "preprocess.manifest"}
    outside = {f"{module} imports {dep}" for module, deps in import_graph().items()
               if module.startswith("preprocess.store") for dep in deps
               if not dep.startswith("preprocess.store") and dep not in allowed}
    assert not outside


WORKFLOWS = ("cli.py", "launch.py", "options.py", "job.py", "plan.py", "prepare.py", "device.py",
             "writer.py", "executors/inprocess.py", "executors/devices.py", "text_ids.py", "verify.py",
             "stats_report.py")


def test_only_the_packed_store_knows_its_directory_and_format_name():
    """The workflows and the format-independent store modules go through formats.py."""
    modules = [PACKAGE / name for name in WORKFLOWS] + [
        p for p in (PACKAGE / "store").rglob("*.py")
        if not p.is_relative_to(PACKAGE / "store" / "zarr") and p.name != "formats.py"]
    found = [f"{p.relative_to(ROOT)}: {needle}" for p in modules
             for needle in ("features.zarr", '== "zarr"', "== 'zarr'", '!= "zarr"', '"npy" if')
             if needle in p.read_text(encoding="utf-8")]
    assert not found


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                         "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def small_output(tmp_path_factory):
    """A finished npy output of three utterances, written through the store."""
    import numpy as np

    from preprocess.store.dataset import OutputDir
    from preprocess.store.features import UtteranceFeatures
    from preprocess.store.formats import open_writer

    out = tmp_path_factory.mktemp("small") / "out"
    rng = np.random.default_rng(0)
    od = OutputDir(out, "fp", open_writer(out, "npy"))
    entries = []
    for i in range(3):
        item = UtteranceFeatures(f"u{i}", rng.integers(0, 100, 5).astype(np.int32),
                                 rng.integers(0, 8192, 40).astype(np.int32),
                                 rng.standard_normal((32, 1280)).astype(np.float32),
                                 rng.standard_normal(1280).astype(np.float32))
        base = {"id": item.id, "audio_path": f"{item.id}.wav", "text": "t", "speaker": "s",
                "language": "en", "duration": 0.8}
        entries.append(("train", base, 5, 40, {}, item))
    od.commit(entries)
    od.finalize()
    od.close()
    return out


def test_verifying_a_finished_output_imports_no_torch(small_output):
    r = run_python(f"""
import sys
import preprocess.store, preprocess.store.export, preprocess.stats_report, preprocess.pairs
import preprocess.text_ids
from preprocess.verify import verify_output
from preprocess.store import open as open_features
report = verify_output({str(small_output)!r})
assert report.ok and report.checked == 3, report.render()
assert len(open_features({str(small_output)!r})) == 3
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
