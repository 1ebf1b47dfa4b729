#!/usr/bin/env bash
# Installs the classic re-ID evaluation and re-ranking (registry package pyppbox-torchreid,
# a packaged torchreid fork) into a benchmark-only virtual environment, benchmarks/.venv.
#
# The peer is NEVER a dependency of `reid`: it goes into benchmarks/.venv (git-ignored), not into
# the project's .venv. That environment reuses the project's packages (torch, numpy, reid itself)
# through a .pth hook, so nothing large is installed twice; only the peer is added, with
# --no-deps (its declared dependencies Cython/h5py are not needed for the two functions used:
# the compiled evaluation ships prebuilt in the wheel, and the re-ranking is plain numpy).
#
#   bash benchmarks/setup_peer.sh          # needs the project's .venv (make test creates it)
#   benchmarks/.venv/bin/python benchmarks/bench_evaluation.py
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_VERSION="${PEER_VERSION:-1.4.1.0}"
PROJECT_VENV="${PROJECT_VENV:-.venv}"
BENCH_VENV="benchmarks/.venv"

if [ ! -x "$PROJECT_VENV/bin/python" ]; then
    echo "setup_peer.sh: $PROJECT_VENV/bin/python not found; create the project environment first (make test)" >&2
    exit 1
fi
project_site="$("$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
base_python="$("$PROJECT_VENV/bin/python" -c 'import sys; print(sys._base_executable)')"

if [ ! -x "$BENCH_VENV/bin/python" ]; then
    "$base_python" -m venv "$BENCH_VENV"
fi
bench_site="$("$BENCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# addsitedir (not a bare path) so the project's own .pth files (the editable `reid`) apply too.
echo "import site; site.addsitedir('$project_site')" > "$bench_site/_reid_project_site.pth"

"$BENCH_VENV/bin/python" -m pip install --quiet --no-deps "pyppbox-torchreid==$PEER_VERSION"

# Check that the two classic functions load, and that the evaluation is the compiled one.
"$BENCH_VENV/bin/python" benchmarks/bench_evaluation.py --check-peer
"$BENCH_VENV/bin/python" benchmarks/bench_rerank.py --check-peer

# bench_retrieval.py's peer: pytorch-metric-learning's AccuracyCalculator (Recall@K, R-precision,
# MAP@R; Musgrave et al., ECCV 2020). --no-deps: its dependencies torch, numpy and tqdm, and the
# faiss-cpu its kNN uses (the project's `faiss` extra), come from the project's .venv through the
# .pth hook above. scikit-learn (imported by its accuracy_calculator module, and used by
# tests/evaluation/test_retrieval.py's NMI cross-check) is installed with its small pure-Python
# dependencies (joblib, threadpoolctl, ...); numpy and scipy are already satisfied by the project's .venv.
PML_VERSION="${PML_VERSION:-2.9.0}"
SKLEARN_VERSION="${SKLEARN_VERSION:-1.9.1}"
"$BENCH_VENV/bin/python" -m pip install --quiet --no-deps "pytorch-metric-learning==$PML_VERSION"
"$BENCH_VENV/bin/python" -m pip install --quiet "scikit-learn==$SKLEARN_VERSION"
"$BENCH_VENV/bin/python" benchmarks/bench_retrieval.py --check-peer
