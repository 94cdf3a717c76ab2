#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py for what it runs): one command, under
# 8 minutes on one GPU, with the machine's preinstalled torch and no network.
#   bash benchmarks/gpu_check.sh [OUT_DIR]       (default: $OUT if set, else ./gpu_check_out)
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/dry   # the same steps, tiny, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if ! python -c "import sslzoo" 2>/dev/null; then
  pip install --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || { cat "$out/install.log"; exit 2; }
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python benchmarks/gpu_check.py "$out"   # each step has its own limit, all within a 7.5 min budget
