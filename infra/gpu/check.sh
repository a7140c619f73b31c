#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the GPU-relevant tests (the refresh flow on a
# LocalCUDACluster, worker loss on it, CUDA detector training, FAISS on the GPU, the segment engine on the
# GPU) and a short throughput run, with every worker and nanny log line, into one folder (6-7 files):
#
#   PYTHON=python3 infra/gpu/check.sh OUT_DIR      # any Python with the project importable (`make gpu-check`
#                                                   # makes a venv with the gpu extra and calls this)
#
#   OUT_DIR/summary.txt      one line per step: its exit status and seconds, then the test outcome counts
#   OUT_DIR/env.txt          nvidia-smi, CPU and memory, the versions of torch, dask, dask-cuda, faiss
#   OUT_DIR/tests.log        pytest's output with every log line (Dask workers and nannies at INFO)
#   OUT_DIR/junit.xml        the tests' outcomes
#   OUT_DIR/throughput.log   bench/gpu_throughput.py on a GPU, else bench/throughput.py (last line: JSON)
#   OUT_DIR/gpu_throughput.txt  on a GPU: the engine's stage table, ceilings and ratios
#   OUT_DIR/profile_<name>.txt  with GPU_THROUGHPUT_ARGS=--profile: each detector's costliest operators
#   OUT_DIR/dmesg.txt        the kernel's last lines (the OOM killer, GPU Xid errors)
#
# Under 5 minutes on one H100/H200: each step has its own time limit. Exit status: the tests' one.
# GPU_THROUGHPUT_VARIANTS='cudnn_benchmark=true;batch_size=32' adds end-to-end rows under other engine
# settings to the throughput run (raise GPU_THROUGHPUT_LIMIT to match: ~15 s a variant, minutes with compile);
# GPU_THROUGHPUT_ARGS='--profile' adds more options (a profile of each detector: OUT_DIR/profile_<name>.txt).
. "$(dirname "$0")/steps.sh" "$@"
export DASK_LOGGING__DISTRIBUTED=info PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

{
  nvidia-smi || echo "nvidia-smi: not found"
  echo "cores: $(nproc)"; free -g
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
  "$py" -c "import dask, distributed; print('dask', dask.__version__, 'distributed', distributed.__version__)"
  "$py" -c "import dask_cuda; print('dask-cuda', dask_cuda.__version__)" || echo "dask-cuda: not installed"
  "$py" -c "import faiss; print('faiss', faiss.__version__, 'gpus seen by faiss', faiss.get_num_gpus() if hasattr(faiss, 'StandardGpuResources') else 'none (no GPU support)')"
} > "$out/env.txt" 2>&1

# The tests: the GPU ones (tests/test_gpu.py: the refresh flow on a LocalCUDACluster, CUDA detector training,
# FAISS on the GPU; tests/test_engine_gpu.py; tests/test_cuda_graphs.py; the dense NMS against torchvision's)
# and worker loss on the cluster this machine gets (a LocalCUDACluster), each test bounded by pytest-timeout.
tests=()
for t in tests/test_gpu.py tests/test_engine_gpu.py tests/test_cuda_graphs.py \
  tests/test_nms.py \
  "tests/test_worker_loss.py::test_a_worker_killed_midway_is_survived_and_reported[cpu]" \
  "tests/test_worker_loss.py::test_a_segment_that_kills_its_worker_every_time_fails_the_flow_in_bounded_time[sigkill-cpu]"; do
  [ -e "${t%%::*}" ] && tests+=("$t")
done
step tests "${TESTS_LIMIT:-210}" "$out/tests.log" "$py" -m pytest -p no:cacheprovider -o log_cli=true --log-cli-level=INFO \
  --timeout 150 -rs --junitxml "$out/junit.xml" "${tests[@]}"
tests_rc=$?

# A short throughput run. On a GPU: bench/gpu_throughput.py (paper-sized random-init models through the segment
# engine against the old path and the models' own ceilings; its table and JSON are copied here). Without one:
# the flow against the bare loop on the same images (bench/throughput.py).
work="$(mktemp -d)"
if "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  step gpu-throughput "${GPU_THROUGHPUT_LIMIT:-150}" "$out/throughput.log" "$py" bench/gpu_throughput.py \
    --images "${GPU_THROUGHPUT_IMAGES:-96}" --out "$work" ${GPU_THROUGHPUT_VARIANTS:+--variants "$GPU_THROUGHPUT_VARIANTS"} \
    ${GPU_THROUGHPUT_ARGS:-}
  cp "$work/gpu_throughput.txt" "$out/gpu_throughput.txt" 2>/dev/null
  cp "$work"/profile_*.txt "$out/" 2>/dev/null
else
  step throughput 75 "$out/throughput.log" "$py" bench/throughput.py --images 300 --segment-size 100 --steps 10 \
    --workdir "$work"
fi
rm -rf "$work"

(dmesg 2>&1 | tail -40) > "$out/dmesg.txt"
grep -E "^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped)" "$out/tests.log" >> "$out/summary.txt"
tail -1 "$out/throughput.log" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $tests_rc
