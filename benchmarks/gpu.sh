#!/usr/bin/env bash
# Every GPU row of the benchmarks on one GPU, in under 8 minutes, appended to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh                      # on a machine with an NVIDIA GPU and '.[cuda12]'
#   GPU_SH_DRY_RUN=1 bash benchmarks/gpu.sh     # print the commands only (any machine)
#
# Rows, each one command under its own `timeout` (seconds in ROWS below) and all of them under a
# total budget (GPU_SH_BUDGET_S, default 465 s, the sum of the rows' timeouts; a row gets at most
# what is left):
#   * PE-Net train step (bench_train_step.py), small and official size, float32 and bfloat16;
#   * RA-SGG phase 2 with retrieval inside the step (bench_train_step.py), when the bench has a flag
#     naming `in_step` (found in its --help; otherwise one line says the row is skipped);
#   * detector forward (bench_detector.py): tiny, ResNet-50-FPN, ResNeXt-101-FPN at 592 px, batch 2,
#     float32 and bfloat16 (the bench adds the bfloat16 rows on a GPU);
#   * evaluator (bench_evaluator.py, host numpy: the GPU machine's CPU), 1,000 GQA-200 test images.
# Each row's stdout/stderr goes to a log under GPU_SH_LOGS (default benchmarks/results/gpu_<UTC time>);
# benchmarks/gpu_report.py turns the JSON lines of the logs into one markdown section (date, device
# name, the command of each row) appended to GPU_SH_RESULTS (default benchmarks/RESULTS.md).
# A row that fails or times out is reported as such, with the JSON lines it printed before.
#
# Without a GPU (jax.default_backend() is not "gpu") it prints one line and exits 0, touching nothing.
# GPU_SH_ALLOW_CPU=1 runs the rows on any backend: a check of the script itself on a CPU machine
# (point GPU_SH_RESULTS and GPU_SH_LOGS elsewhere and lower GPU_SH_BUDGET_S; the figures are not GPU
# rows).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" # this checkout's sgg_jax, not an installed one
PYTHON=${PYTHON:-python}
DRY_RUN=${GPU_SH_DRY_RUN:-0}
BUDGET_S=${GPU_SH_BUDGET_S:-465}
RESULTS=${GPU_SH_RESULTS:-benchmarks/RESULTS.md}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS=${GPU_SH_LOGS:-benchmarks/results/gpu_$STAMP}

if [[ $DRY_RUN != 1 ]]; then
  # backend, device kind, device count; the import's warnings (no CUDA jaxlib, ...) are not ours
  probe=$("$PYTHON" -c 'import jax; d = jax.devices(); print(jax.default_backend()); print(d[0].device_kind); print(len(d))' 2>/dev/null) ||
    probe="unknown (python -c 'import jax' failed)"
  backend=$(head -n 1 <<<"$probe")
  if [[ $backend != gpu && ${GPU_SH_ALLOW_CPU:-0} != 1 ]]; then
    echo "gpu.sh: no GPU found (jax backend: $backend); nothing run"
    exit 0
  fi
  device_kind=$(sed -n 2p <<<"$probe")
  device_count=$(sed -n 3p <<<"$probe")
  device_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true
  device_name=${device_name:-$device_kind}
fi

TRAIN="$PYTHON benchmarks/bench_train_step.py"
# name | timeout s | command (word-split on spaces: no quoting inside)
ROWS=(
  "train_small_float32|40|$TRAIN --size small --dtype float32 --batch 8 --pairs 512 --steps 20"
  "train_small_bfloat16|40|$TRAIN --size small --dtype bfloat16 --batch 8 --pairs 512 --steps 20"
  "train_official_float32|85|$TRAIN --size official --dtype float32 --batch 8 --pairs 512 --steps 10"
  "train_official_bfloat16|85|$TRAIN --size official --dtype bfloat16 --batch 8 --pairs 512 --steps 10"
)
# retrieval inside the step: only when bench_train_step.py has such a flag (a flag named *in_step*,
# or a flag with an in_step choice, run as --flag=in_step)
train_help=$($TRAIN --help 2>/dev/null) || true
in_step_flag=$(grep -o -E -- '--[A-Za-z_]*in_step[A-Za-z_]*' <<<"$train_help" | head -n 1) || true
if [[ -z $in_step_flag ]]; then
  in_step_flag=$(grep -o -E -- '--[A-Za-z_]+ \{[^}]*\bin_step\b[^}]*\}' <<<"$train_help" |
    head -n 1 | sed -E 's/ .*/=in_step/') || true
fi
if [[ -n $in_step_flag ]]; then
  ROWS+=("in_step_retrieval|70|$TRAIN --size small --batch 8 --pairs 512 --steps 10 --retrieval $in_step_flag")
else
  skipped="benchmarks/bench_train_step.py --help has no in_step flag"
  echo "gpu.sh: in-step retrieval row skipped: $skipped"
fi
ROWS+=(
  "detector_forward|105|$PYTHON benchmarks/bench_detector.py --presets=tiny,resnet50_fpn,resnext101_fpn --sizes=592 --batches=2 --iters=5 --warmup=1"
  "evaluator|40|$PYTHON benchmarks/bench_evaluator.py --num_images 1000 --memory_images"
)

if [[ $DRY_RUN == 1 ]]; then
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name limit command <<<"$row"
    echo "gpu.sh: dry run: $name (timeout ${limit}s): $command"
  done
  exit 0
fi

mkdir -p "$LOGS"
manifest="$LOGS/manifest.tsv"
: >"$manifest"
if [[ -n ${skipped:-} ]]; then
  printf '%s\t%s\t%s\t%s\t%s\n' in_step_retrieval "skipped: $skipped" 0 "" "" >>"$manifest"
fi
start=$SECONDS
index=0
for row in "${ROWS[@]}"; do
  IFS='|' read -r name limit command <<<"$row"
  index=$((index + 1))
  left=$((BUDGET_S - (SECONDS - start)))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 10)); then
    echo "gpu.sh: [$index/${#ROWS[@]}] $name: not run (total budget of ${BUDGET_S}s spent)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "budget" 0 "$command" "" >>"$manifest"
    continue
  fi
  log="$LOGS/$name.log"
  began=$SECONDS
  rc=0
  # shellcheck disable=SC2086  # the command is a list of words on purpose
  timeout --kill-after=10 "$limit" $command >"$log" 2>&1 || rc=$?
  took=$((SECONDS - began))
  if ((rc == 124 || rc == 137)); then status="timeout ${limit}s"; elif ((rc == 0)); then status=ok; else status="exit $rc"; fi
  echo "gpu.sh: [$index/${#ROWS[@]}] $name: $status (${took}s, log $log)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$command" "$log" >>"$manifest"
done

"$PYTHON" benchmarks/gpu_report.py --manifest "$manifest" --results "$RESULTS" \
  --device "$device_name" --device_count "$device_count" --total_s $((SECONDS - start))
echo "gpu.sh: appended the rows to $RESULTS (logs in $LOGS)"
