#!/usr/bin/env bash
# The package as users get it: build the sdist and the wheel (the wheel from the sdist, as `python -m build`
# does), check that the presets, the bundled data and the licences are inside both, install the wheel into a
# fresh virtual environment (no access to this checkout) and run the command from there: --version, list, and
# the main job's smoke version. Run by .ci/run; locally: bash scripts/check_package.sh (about 1-2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
python3 - "$work/dist" <<'PY'
import glob, sys, tarfile, zipfile
from pathlib import Path

dist = sys.argv[1]
presets = sorted(p.name for p in Path("src/fastadapt/config/presets").glob("*.toml"))
need = [f"fastadapt/config/presets/{p}" for p in presets] + [
    "fastadapt/data/omniglot28.npz", "fastadapt/data/omniglot28.sha256", "fastadapt/data/LICENSE-omniglot.txt", "fastadapt/py.typed"]
wheel = set(zipfile.ZipFile(glob.glob(f"{dist}/*.whl")[0]).namelist())
sdist = {n.split("/", 1)[1] for n in tarfile.open(glob.glob(f"{dist}/*.tar.gz")[0]).getnames() if "/" in n}
missing = [n for n in need if n not in wheel] + [f"src/{n}" for n in need if f"src/{n}" not in sdist]
licences = [n for n in wheel if n.endswith(("/LICENSE", "LICENSE-omniglot.txt")) and ".dist-info/" in n]
if missing or not licences:
    sys.exit(f"package check: missing from the packages: {missing[:5]}{' (and more)' if len(missing) > 5 else ''}"
             f"{'' if licences else '; no licence file in the wheel metadata'}")
print(f"package check: {len(presets)} presets, the data and the licences are in the wheel and the sdist")
PY
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0  # the CPU build, as .ci/run installs it
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/*.whl
cd "$work"
"$work/venv/bin/python" -c "import fastadapt, sys; assert fastadapt.__file__.startswith(sys.prefix), fastadapt.__file__"
"$work/venv/bin/fastadapt" --version
"$work/venv/bin/python" -m fastadapt list >/dev/null
"$work/venv/bin/fastadapt" train protonet-quick optim.steps=3 model.hidden=8 data.meta_batch=1 eval.val_every=0 eval.test_episodes=4 \
    eval.batch=4 run.out="$work/run" run.progress=false
test -s "$work/run/results.json"
echo "package check: the wheel installs in a fresh venv and trains"
