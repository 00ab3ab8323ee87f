#!/usr/bin/env bash
# scripts/benchmark.py on a GPU machine without internet that already has python3 with torch, numpy and
# transformers: installs nerfstudio, diffusers and their import-time needs from a folder of wheels (no
# index, no dependencies resolved) into a private folder, then runs the benchmark from this checkout.
#
#   scripts/offline_benchmark.sh WHEEL_DIR [--checks] [--edit-check SCENE OUT_DIR] [benchmark options...]
#   e.g. PDS_TIME_BUDGET=450 scripts/offline_benchmark.sh .whl --checks --edit-check path/to/in2n_face out/edit \
#            --scene path/to/in2n_face --output out/benchmark.md
#
# WHEEL_DIR: wheels of nerfstudio 1.1.5, diffusers and what they import (for this project's lent GPU,
# ../shared/tools/gpu-wheels.sh downloads them). Nothing outside PDS_SITE (default /tmp/pds_site) changes.
# --checks: first run tests/test_cuda.py (the fast paths against their plain references on the GPU); the
# benchmark runs either way, and the script exits non-zero when a check failed.
# --edit-check SCENE OUT_DIR: then scripts/edit_check.py, a short `ns-train pds` and `ns-train pds-splat` through every stage on SCENE and
# `ns-render` of its held-out views, into OUT_DIR (without the prior's weights or the run's checkpoints). The prior of both the edit check and
# the benchmark is then one pipeline of PDS_PRIOR_ARCH (sd15, the default, or tiny) with random weights, built once.
# PDS_EDIT_CHECK_ARGS: more edit_check.py options (a CPU rehearsal's smaller sizes, e.g. "--iterations 6 3 6").
# PDS_TIME_BUDGET=SECONDS: no benchmark row starts later than this after the script started (passed on as
# the benchmark's --time-budget, less what installing and the checks took).
set -euo pipefail
wheels=${1:?usage: scripts/offline_benchmark.sh WHEEL_DIR [--checks] [--edit-check SCENE OUT_DIR] [benchmark options...]}
shift
checks=0
if [ "${1:-}" = "--checks" ]; then checks=1; shift; fi
edit_scene=""
if [ "${1:-}" = "--edit-check" ]; then edit_scene=${2:?--edit-check SCENE OUT_DIR}; edit_out=${3:?--edit-check SCENE OUT_DIR}; shift 3; fi
site=${PDS_SITE:-/tmp/pds_site}
ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "no wheels in $wheels: download them first (pip download ... -d $wheels)" >&2; exit 2; }
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# pyliblzfse (nerfstudio imports it for Apple depth files) has no wheel for every Python: a stand-in lets it import.
python3 -c "import pyliblzfse" 2>/dev/null || : >"$site/pyliblzfse.py"
echo "wheels installed in $(($(date +%s) - start)) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
checks_rc=0
if [ "$checks" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py || checks_rc=$?
  echo "checks done at $(($(date +%s) - start)) s (exit status $checks_rc)"
fi
prior=()
if [ -n "$edit_scene" ]; then
  arch=${PDS_PRIOR_ARCH:-sd15}
  prior_dir=${PDS_PRIOR_DIR:-/tmp/pds_prior_$arch}
  dtype=float32; [ "$arch" = sd15 ] && dtype=float16
  python3 scripts/make_tiny_prior.py "$prior_dir" --architecture "$arch" --dtype "$dtype" --overwrite || checks_rc=1
  prior=(--prior "$prior_dir")
  # shellcheck disable=SC2086  # PDS_EDIT_CHECK_ARGS is a list of options
  python3 scripts/edit_check.py "$edit_out" --scene "$edit_scene" --prior "$prior_dir" ${PDS_EDIT_CHECK_ARGS:-} || checks_rc=1
  # The run's checkpoints (hundreds of MB at 512) are not worth bringing back; no folder when edit_check refused.
  if [ -d "$edit_out" ]; then find "$edit_out" -name "*.ckpt" -delete; fi
  echo "edit check done at $(($(date +%s) - start)) s (exit status $checks_rc)"
fi
budget=()
if [ -n "${PDS_TIME_BUDGET:-}" ]; then budget=(--time-budget "$((PDS_TIME_BUDGET - ($(date +%s) - start)))"); fi
python3 scripts/benchmark.py "${budget[@]}" "${prior[@]}" "$@"
echo "done in $(($(date +%s) - start)) s"
exit "$checks_rc"
