#!/usr/bin/env bash
# GPU check of lvae: CUDA tests, coding speed, evaluation, training speed with and without
# autocast, and a time-boxed fine-tune of qarv_small. See docs/gpu.md.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--minutes M] [--batch N] [--speed-iters N] [--data DIR]
#
# Runs from a copy of the repository root without installing lvae (PYTHONPATH points at it).
# Python: $PYTHON, else python3. Wheels in .whl/ (not on --dry-run) are installed into
# $GPU_CHECK_SITE (default /tmp/lvae-gpu-site) first. The steps themselves are in gpu_check.py;
# the summary is <out>/gpu_check.json. Exit status: 0 when no step failed, 1 otherwise, 2 for
# bad arguments.
set -u
GPU_CHECK_T0=$(date +%s.%N)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check.sh: error: no Python at '$PYTHON' (set PYTHON=...)" >&2
    exit 2
fi

dry=0
for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry=1; fi
done

wheels=none
site=${GPU_CHECK_SITE:-/tmp/lvae-gpu-site}
wheels_log=$(mktemp "${TMPDIR:-/tmp}/lvae-gpu-wheels.XXXXXX")
t=$(date +%s.%N)
if [ "$dry" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "[gpu_check] installing $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into $site"
    if timeout 180 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl >"$wheels_log" 2>&1; then
        wheels=ok
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        wheels=failed
        tail -n 5 "$wheels_log" >&2
    fi
fi
export GPU_CHECK_WHEELS=$wheels GPU_CHECK_SITE=$site GPU_CHECK_WHEELS_LOG=$wheels_log
export GPU_CHECK_WHEELS_SECONDS=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
export GPU_CHECK_T0 PYTHON
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" benchmarks/gpu_check.py "$@"
status=$?
rm -f "$wheels_log"
exit $status
