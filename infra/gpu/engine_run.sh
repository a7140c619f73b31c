#!/usr/bin/env bash
# The segment engine's GPU measurement in one run (at most 9 minutes on one H100/H200): the paper-sized bench with
# CUDA graphs, batch 32 and sequential detectors as variants and a profile of each detector, batch 32 with
# expandable allocator segments, alternating portrait and landscape images with CUDA graphs (do graphs hold
# when shapes vary?), then the engine's GPU tests. Every step has its own time limit and log:
#
#   PYTHON=python3 infra/gpu/engine_run.sh OUT_DIR
#
#   OUT_DIR/summary.txt       each step's exit status and seconds, the end-to-end rows, the test outcomes
#   OUT_DIR/main/             the bench's table (gpu_throughput.txt), JSON and profiles; main.log its log
#   OUT_DIR/batch32x/, OUT_DIR/mixed/   the other two bench runs (their logs beside them)
#   OUT_DIR/tests.log         pytest's output
#
# ENGINE_RUN_ARGS is added to each bench run's options: ENGINE_RUN_ARGS='--small --device cpu --images 24'
# runs the script through on a machine without a GPU in a minute (the GPU tests skip). The steps together
# take at most STEPS_BUDGET_S seconds (default 540: the device tool allows 600 s a command, set-up included).
export STEPS_BUDGET_S="${STEPS_BUDGET_S:-540}"
. "$(dirname "$0")/steps.sh" "$@"
summary="$out/summary.txt"

bench() {  # bench NAME LIMIT_S [ENV=VALUE ...] -- ARGS...: bench/gpu_throughput.py into OUT_DIR/NAME
  local name=$1 limit=$2
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  # shellcheck disable=SC2086  # ENGINE_RUN_ARGS: several options
  step "$name" "$limit" "$out/$name.log" env "${envs[@]}" "$py" bench/gpu_throughput.py --out "$out/$name" "$@" \
    ${ENGINE_RUN_ARGS:-}
  rm -rf "$out/$name/images"
  sed -n '/^end to end/,$p' "$out/$name/gpu_throughput.txt" 2>/dev/null | head -60 >> "$summary"
  grep -E "CUDA graphs in the timed run|gpu_throughput: variant .*cuda_graphs|vary too much" "$out/$name.log" | tail -8 >> "$summary"
}

bench main 220 -- --images 384 --skip-old --profile \
  --variants 'cuda_graphs=true;cuda_graphs=true,batch_size=32;batch_size=32;concurrent_detectors=false'
bench batch32x 90 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -- --images 192 --skip-old --batch-size 32
bench mixed 70 -- --images 192 --skip-old --mixed-orientation --variants cuda_graphs=true
# Only the tests marked gpu (the CPU ones run in CI); -v names each test as it starts, so a test that hangs is
# named in the log, and pytest-timeout ends it with every thread's stack after 90 s.
step tests 170 "$out/tests.log" "$py" -m pytest -v -m gpu -p no:cacheprovider --timeout 90 -rs \
  tests/test_cuda_graphs.py tests/test_engine_gpu.py tests/test_nms.py
grep -E "passed|failed|skipped|FAILED|ERROR|Timeout" "$out/tests.log" | grep -v " PASSED" | tail -15 >> "$summary"
