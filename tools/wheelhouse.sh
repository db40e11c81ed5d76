#!/usr/bin/env bash
# An offline install bundle: the project's wheel and the wheels it needs, in one folder.
#
#   bash tools/wheelhouse.sh DEST [--profile full|gpu-check] [--gpu-check] [--torch SPEC]
#        [--python-version X.Y] [--platform TAG]... [--dry-run]
#
# Profiles (the requirements come from pyproject.toml's [project].dependencies):
#   full       every dependency except torch: the node's own (CUDA) torch is kept.
#   gpu-check  also without WeTextProcessing (pynini alone is a 165 MB wheel) and matplotlib
#              (only `preprocess stats` draws with it): enough for corpora whose text takes the
#              basic-cleanup branch, e.g. tools/gpu_check.py, in a bundle small enough to carry.
# --torch SPEC     add a torch wheel too (e.g. torch==2.13.0), for a node without torch.
# --python-version, --platform  wheels for another interpreter or platform, passed to
#                  `pip download --only-binary=:all:` (default: this interpreter and platform).
# --dry-run        print the requirements and the pip commands; fetch nothing.
#
# Writes DEST/preprocess-*.whl, the dependency wheels, DEST/requirements.txt (what was
# collected) and DEST/INSTALL.md (how to install it offline). docs/GPU.md explains more.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

dest="" profile="full" torch_spec="" python_version="" dry_run=0
platforms=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) [[ $# -ge 2 ]] || usage; profile="$2"; shift 2 ;;
        --gpu-check) profile="gpu-check"; shift ;;
        --torch) [[ $# -ge 2 ]] || usage; torch_spec="$2"; shift 2 ;;
        --python-version) [[ $# -ge 2 ]] || usage; python_version="$2"; shift 2 ;;
        --platform) [[ $# -ge 2 ]] || usage; platforms+=("$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage ;;
        -*) echo "wheelhouse: unknown option $1" >&2; usage ;;
        *) [[ -z "$dest" ]] || { echo "wheelhouse: one DEST only (got $dest and $1)" >&2; usage; }
           dest="$1"; shift ;;
    esac
done
[[ -n "$dest" ]] || { echo "wheelhouse: DEST is missing" >&2; usage; }
case "$profile" in
    full) leave_out="torch" ;;
    gpu-check) leave_out="torch WeTextProcessing matplotlib" ;;
    *) echo "wheelhouse: --profile must be full or gpu-check, not $profile" >&2; usage ;;
esac
if [[ -n "$python_version" && ! "$python_version" =~ ^3\.[0-9]+$ ]]; then
    echo "wheelhouse: --python-version wants X.Y (e.g. 3.12), not $python_version" >&2; usage
fi

# The requirement lines of pyproject.toml minus the left-out names (compared as normalised
# distribution names), plus torch when asked for.
requirements="$("$PYTHON" - "$ROOT/pyproject.toml" "$leave_out" "$torch_spec" <<'EOF'
import re, sys, tomllib
pyproject, leave_out, torch_spec = sys.argv[1], sys.argv[2].split(), sys.argv[3]
def name(req):
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)).lower()
dropped = {name(n) for n in leave_out}
with open(pyproject, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
kept = [d for d in deps if name(d) not in dropped]
if torch_spec:
    kept.append(torch_spec)
print("\n".join(kept))
EOF
)"

download=("$PYTHON" -m pip download --dest "$dest" --only-binary=:all:)
if [[ -n "$python_version" ]]; then
    download+=(--python-version "$python_version" --implementation cp)
fi
for tag in "${platforms[@]+"${platforms[@]}"}"; do
    download+=(--platform "$tag")
done
download+=(-r "$dest/requirements.txt")
# The project itself is pure Python: one py3-none-any wheel serves every platform.
build=("$PYTHON" -m pip wheel --no-deps --wheel-dir "$dest" "$ROOT")

if [[ $dry_run -eq 1 ]]; then
    echo "profile: $profile"
    echo "left out: $leave_out${torch_spec:+ (torch added: $torch_spec)}"
    echo "requirements:"
    sed 's/^/  /' <<<"$requirements"
    echo "commands:"
    echo "  ${build[*]}"
    echo "  ${download[*]}"
    exit 0
fi

mkdir -p "$dest"
printf '%s\n' "$requirements" >"$dest/requirements.txt"
"${build[@]}"
"${download[@]}"

wheel="$(cd "$dest" && ls preprocess-*.whl | head -n 1)"
if [[ "$profile" == "full" ]]; then
    install="pip install --no-index --find-links DEST preprocess"
else
    # WeTextProcessing and matplotlib are declared dependencies: install the listed ones, then
    # the project without resolving its dependencies again.
    install="pip install --no-index --find-links DEST -r DEST/requirements.txt
pip install --no-index --find-links DEST --no-deps preprocess"
fi
cat >"$dest/INSTALL.md" <<EOF
# Offline install of preprocess (profile: $profile)

Made by tools/wheelhouse.sh on $(date -u +%Y-%m-%d) for Python ${python_version:-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}${platforms[0]:+ on ${platforms[*]}}.
Project wheel: $wheel. Left out: $leave_out${torch_spec:+ (torch added: $torch_spec)}.

Copy this folder to the node, as DEST, and in the environment that already holds torch:

\`\`\`sh
$install
\`\`\`

pip keeps an installed torch that satisfies the requirement (torch>=2.3) and fetches nothing.
To keep the node's own packages untouched, make a venv that sees them first:
\`python3 -m venv --system-site-packages ENV && . ENV/bin/activate\`, then the lines above.
EOF
if [[ "$profile" == "gpu-check" ]]; then
    cat >>"$dest/INSTALL.md" <<EOF

Without WeTextProcessing only corpora whose records take the basic-cleanup branch (language
codes other than en/fr/de/zh/ja) can be processed; the others are rejected with the reason.
EOF
fi
echo "wheelhouse: $(ls "$dest" | grep -c '\.whl$') wheels, $(du -sm "$dest" | cut -f1) MB in $dest"
