#!/usr/bin/env bash
# On a GPU machine (the project's device image): probe the LocalCUDACluster the flows use and run the refresh
# flow test with every nanny/worker log line, writing everything under ${OUT:-gpu-diagnosis}/.
set -u
out="${OUT:-gpu-diagnosis}"; mkdir -p "$out"
export DASK_LOGGING__DISTRIBUTED=info PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
{ nvidia-smi; nproc; free -g; python3 -c "import torch, dask, distributed, dask_cuda, faiss; print(torch.__version__, dask.__version__, dask_cuda.__version__, faiss.__version__)"; } > "$out/env.log" 2>&1
timeout 150 python3 infra/gpu/worker_probe.py --workdir /tmp/probe > "$out/probe.log" 2>&1; echo "probe rc=$?" > "$out/summary.log"
timeout 180 python3 -m pytest -x -s -p no:cacheprovider -o log_cli=true --log-cli-level=INFO \
  "tests/test_refresh_flow.py::test_refresh_builds_searchable_index_and_reuses_segments" > "$out/refresh_test.log" 2>&1
echo "refresh test rc=$?" >> "$out/summary.log"
(timeout 5 dmesg 2>&1 | tail -20) > "$out/dmesg.log"
cat "$out/summary.log"; grep '^{' "$out/probe.log"
grep -n -i -E "exited with status|killed by signal|restarting worker|fatal|abort|segmentation|OMP:|error #|cuda error|Traceback|KilledWorker|passed|failed" "$out/probe.log" "$out/refresh_test.log" | head -60
