#!/usr/bin/env bash
# One GPU lease's whole programme, in one call of at most 9 minutes: set up offline from a kit,
# check CUDA, benchmark FPN and dense, compare them over seeds on the GPU-fast recipe, and gather
# the results into at most 8 files.
#
#   bash scripts/gpu_lease.sh --kit .gpu_kit --out "$OUT"     # on a machine with one GPU
#   bash scripts/gpu_lease.sh --dry-run --out output/lease    # the same steps on the CPU
#
# The kit comes from scripts/make_gpu_kit.sh (wheels, detectron2's source, DSB2018). Each step
# runs under its own time limit (seconds; --limit STEP=SECONDS changes one): a step past its
# limit is stopped (its process group, training children included), the summary says so, and
# the next step runs. Steps and limits:
#   setup       150  scripts/install.sh, offline, from the kit, against the machine's CUDA torch
#                    (dry run: the installation is checked, not redone)
#   cuda_tests   60  pytest tests/test_cuda.py (they skip without a GPU)
#   benchmark    60  tools/benchmark.py --amp, FPN vs dense R50, at 608 px and at 256 px
#                    (dry run: on the CPU in float32, at 128 and 64 px, one timed call each)
#   compare     240  tools/compare.py --jobs 6 on configs/gpu_fast/ (FPN, dense) x seeds 0-2 on
#                    DSB2018 (dry run: --jobs 2, seed 0, 3 steps on the synthetic set)
#   gather       15  OUT/summary.md (steps, machine, versions, nvidia-smi), benchmark_608.json,
#                    benchmark_256.json, compare.md/.json/.png, runs.tar.gz (each run's metrics,
#                    config and log), logs.tar.gz (each step's output)
# They add up to 525 s, inside the 9 minutes the issue allows and the device tool's 10 per call.
# The dry run's limits are longer (setup 120, cuda_tests 120, benchmark 600, compare 900,
# gather 60): the same R50 models run on the CPU.
# Exit code: 0 when every step succeeded, 1 when one failed or ran over, 2 for bad arguments, a
# missing kit file or no GPU (said in one line before anything starts).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
kit=.gpu_kit
out=${OUT:-output/gpu_lease}
dry_run=0
declare -A limit=([setup]=150 [cuda_tests]=60 [benchmark]=60 [compare]=240 [gather]=15)
# The dry run's limits: R50 trains, evaluates and is counted far slower on a CPU.
declare -A dry_limit=([setup]=120 [cuda_tests]=120 [benchmark]=600 [compare]=900 [gather]=60)
declare -A chosen_limit=()
steps=(setup cuda_tests benchmark compare gather)

fail() { echo "gpu_lease: error: $*" >&2; exit 2; }
usage="usage: bash scripts/gpu_lease.sh [--dry-run] [--kit DIR] [--out DIR] [--limit STEP=SECONDS]"
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --kit|--out|--limit)
      [ $# -ge 2 ] || fail "$1 needs a value; $usage"
      case $1 in
        --kit) kit=$2 ;;
        --out) out=$2 ;;
        --limit)
          step=${2%%=*} seconds=${2#*=}
          [ -n "${limit[$step]+set}" ] || fail "--limit $2: no step '$step' (steps: ${steps[*]})."
          [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || fail "--limit $2: give whole seconds, e.g. $step=120."
          chosen_limit[$step]=$seconds ;;
      esac
      shift 2 ;;
    *) fail "unknown argument $1; $usage" ;;
  esac
done

if [ "$dry_run" = 1 ]; then
  for step in "${steps[@]}"; do limit[$step]=${dry_limit[$step]}; done
fi
for step in "${!chosen_limit[@]}"; do limit[$step]=${chosen_limit[$step]}; done

# Before anything starts: the kit's files and the GPU (neither is needed by the dry run).
if [ "$dry_run" = 0 ]; then
  for needed in "$kit/wheels" "$kit/dsb2018/annotations/train.json" "$kit/dsb2018/annotations/val.json" \
      "$kit/dsb2018/images"; do
    [ -e "$needed" ] || fail "the kit lacks $needed; build the kit with bash scripts/make_gpu_kit.sh $kit"
  done
  source_archive=$(ls "$kit"/detectron2-*.tar.gz 2>/dev/null | head -n 1)
  [ -n "$source_archive" ] || fail "the kit lacks $kit/detectron2-*.tar.gz; build the kit with bash scripts/make_gpu_kit.sh $kit"
  "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
    || fail "no GPU: $PYTHON's torch sees no CUDA device. Run with --dry-run to rehearse on the CPU."
fi
mkdir -p "$out" || fail "cannot create --out $out"
work=output/gpu_lease_work
rm -rf "$work" && mkdir -p "$work/logs" || fail "cannot create $work"
export PYTHONUNBUFFERED=1

declare -A result seconds_taken
run_step() {  # run_step STEP COMMAND...: the command under the step's limit, its output logged
  local step=$1; shift
  local start=$SECONDS status
  echo "[lease] $step (limit ${limit[$step]} s): $*"
  # timeout runs the command in a process group of its own and stops all of it
  timeout --kill-after=15 "${limit[$step]}" "$@" > "$work/logs/$step.log" 2>&1
  status=$?
  seconds_taken[$step]=$((SECONDS - start))
  case $status in
    0) result[$step]="ok" ;;
    124|137) result[$step]="stopped at its limit (${limit[$step]} s)" ;;
    *) result[$step]="failed (exit code $status)" ;;
  esac
  echo "[lease] $step: ${result[$step]} after ${seconds_taken[$step]} s"
  [ "$status" = 0 ] || tail -n 15 "$work/logs/$step.log" | sed "s/^/[lease]   /"
}

if [ "$dry_run" = 1 ]; then
  device=cpu sizes=(128 64) jobs=2 seeds=(0) datasets=datasets
  bench_opts=(--warmup 0 --repeats 1 --train-repeats 1)  # float32: autocast is for the GPU
  compare_args=(--image-size 128 --repeats 1)
  compare_opts=(SOLVER.MAX_ITER 3 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 1 SOLVER.STEPS "()"
                DATASETS.TRAIN "('nuclei_synthetic_train',)" DATASETS.TEST "('nuclei_synthetic_val',)"
                TEST.DETECTIONS_PER_IMAGE 50 DATALOADER.NUM_WORKERS 0)
  run_step setup bash -c "'$PYTHON' scripts/check_torch.py && '$PYTHON' -c 'import detectron2._C, maskrcnnpp'"
else
  device=cuda sizes=(608 256) jobs=6 seeds=(0 1 2) datasets=$kit
  bench_opts=(--amp) compare_args=() compare_opts=()
  run_step setup env WHEELS="$kit/wheels" DETECTRON2_SOURCE="$source_archive" PYTHON="$PYTHON" \
    bash scripts/install.sh
fi
export DETECTRON2_DATASETS=$datasets
run_step cuda_tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
run_step benchmark bash -c "for size in ${sizes[*]}; do '$PYTHON' tools/benchmark.py \
  --config-file configs/maskrcnn_R50_FPN.yaml configs/maskrcnnpp_R50.yaml --device $device \
  --image-size \$size ${bench_opts[*]} --out '$work'/benchmark_\$size.json || exit; done"
run_step compare "$PYTHON" tools/compare.py \
  --config-file configs/gpu_fast/maskrcnn_R50_FPN.yaml configs/gpu_fast/maskrcnnpp_R50.yaml \
  --seeds "${seeds[@]}" --jobs "$jobs" --output "$work/compare" "${compare_args[@]}" "${compare_opts[@]}"

gather() {
  {
    echo "# GPU lease: $([ "$dry_run" = 1 ] && echo "dry run on the CPU" || echo "one GPU")"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo
    echo "| step | limit (s) | took (s) | result |"
    echo "|---|---:|---:|---|"
    for step in setup cuda_tests benchmark compare; do
      echo "| $step | ${limit[$step]} | ${seconds_taken[$step]:-} | ${result[$step]:-not run} |"
    done
    echo
    echo '## Machine'
    echo
    echo '```'
    "$PYTHON" -c "import platform, torch, sys
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version())
print('GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')
try:
    from maskrcnnpp.machine import cpu_name  # the model name; absent where the set-up step failed
except ImportError:
    cpu_name = platform.machine
print('CPU:', cpu_name(), '|', __import__('os').cpu_count(), 'threads')"
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
    echo '```'
  } > "$out/summary.md"
  for size in "${sizes[@]}"; do
    [ ! -f "$work/benchmark_$size.json" ] || cp "$work/benchmark_$size.json" "$out/"
  done
  for report in compare.md compare.json compare.png; do
    [ ! -f "$work/compare/$report" ] || cp "$work/compare/$report" "$out/"
  done
  if [ -d "$work/compare/runs" ]; then
    (cd "$work/compare" && find runs \( -name '*.json' -o -name 'log.txt' -o -name 'config.yaml' \
      -o -name '*.csv' \) -print0 | tar --null -czf - -T -) > "$out/runs.tar.gz"
  fi
  tar -czf "$out/logs.tar.gz" -C "$work" logs
}
run_step gather bash -c "$(declare -p limit result seconds_taken sizes dry_run out work PYTHON); \
  $(declare -f gather); gather"
echo "[lease] wrote $(ls "$out" | wc -l) files to $out: $(ls "$out" | tr '\n' ' ')"
for step in "${steps[@]}"; do
  [ "${result[$step]}" = ok ] || exit 1
done
exit 0
