#!/usr/bin/env bash
# One-shot GPU benchmark: the three benchmark scripts at full MNIST size on one GPU, in about 5 minutes.
#
#   bash benchmarks/gpu.sh OUT_DIR              # on a machine with one CUDA GPU
#   bash benchmarks/gpu.sh --cpu-smoke OUT_DIR  # tiny sizes on CPU: checks the script itself
#
# Writes OUT_DIR/hvp.json, OUT_DIR/eigs.json, OUT_DIR/sweep.json, one log per step and
# OUT_DIR/gpu_run.json (status of each step, exit codes, wall times, nvidia-smi's GPU line).
# Installs nothing and downloads nothing: it needs the project's own environment with jax[cuda]
# and a CUDA torch already in it (PYTHON, default .venv/bin/python if present, else python3).
# Without a GPU visible to both JAX and torch it writes status "skipped" and exits 0.
#
# Steps (each under its own time limit, so one slow step cannot eat the others' time):
#   hvp    60,000 samples: every HVP method, 7 interleaved rounds (no memory processes) (~30 s)
#   eigs   60,000 samples, k=30: hessjax (with and without the multiplicity check), eigsh
#          over torch (default threads), PyHessian,
#          matfree; float64 reference on the GPU                                        (~90 s)
#   sweep  60,000 samples, k=10, 2 epochs, 8 λ (0:0.07:8), λ batches 1 and 8 (GPU_BATCHES);
#          the torch pipeline on one λ (hessjax.bridges.torch_pipeline has no device option:
#          it runs on the host CPU, as the original did)                               (~80 s)
#   proxies  benchmarks/sweep.py --proxies: basis-sized selects, batch 8 ÷ batch 1 per λ and
#          products executed ÷ needed (member products and lockstep), host-blocked fraction
#          at λ-batch 4, peak memory                                                     (~80 s)
# Then one table (benchmarks/gpu_table.py): s/λ, ms per product (hessjax and torch, same device),
# host-blocked fraction, peak device memory.
# On a GPU, float32 matmuls: hessjax uses Precision.HIGHEST (no TF32); torch keeps its default
# (torch.backends.cuda.matmul.allow_tf32 = False), so both compute in full float32.
set -u -o pipefail

smoke=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=1; shift; fi
if [[ $# -ne 1 ]]; then
  echo "usage: bash benchmarks/gpu.sh [--cpu-smoke] OUT_DIR" >&2
  exit 2
fi
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$out" || { echo "error: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)

# JAX must not grab most of the GPU up front: torch runs beside it in other processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export HESSJAX_CACHE_DIR="${HESSJAX_CACHE_DIR:-$out/xla-cache}"

status() {  # status NAME STATE [REASON] -> $out/gpu_run.json (merged)
  "$PYTHON" - "$out/gpu_run.json" "$@" <<'EOF'
import json, sys, pathlib
path, name, state = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
data = json.loads(path.read_text()) if path.exists() else {}
if name == "run":
    data["status"] = state
    if len(sys.argv) > 4:
        data["reason"] = sys.argv[4]
else:
    data.setdefault("steps", {})[name] = json.loads(state)
path.write_text(json.dumps(data, indent=1) + "\n")
EOF
}

rm -f "$out/gpu_run.json"
if [[ $smoke -eq 1 ]]; then
  device=cpu
  export JAX_PLATFORMS=cpu
  hvp_args=(--samples 512 --repeats 2 --no-memory --no-single-thread)
  eigs_args=(--samples 256 --k 5 --repeats 1 --methods hessjax,hessjax_nomc,scipy_default,pyhessian,matfree)
  sweep_args=(--train-samples 256 --test-samples 128 --k 3 --epochs 1 --lambdas 0:0.01:2 --batches 1,2
              --torch-lambdas 1 --repeats 1)
  proxy_args=(--proxy-samples 512 --proxy-variants b1,b8,b8-lockstep)
  limits=(120 180 240 600)
else
  device=gpu
  probe=$("$PYTHON" - <<'EOF' 2>&1
import jax, torch
jb = jax.default_backend()
print(f"jax={jb} torch_cuda={torch.cuda.is_available()}")
raise SystemExit(0 if jb == "gpu" and torch.cuda.is_available() else 3)
EOF
)
  rc=$?
  if [[ $rc -ne 0 ]]; then
    reason="no GPU visible to both JAX and torch ($(echo "$probe" | tail -n 1)); nothing measured"
    echo "skipped: $reason (bash benchmarks/gpu.sh --cpu-smoke DIR tests this script on CPU)"
    status run skipped "$reason"
    exit 0
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/nvidia-smi.txt" 2>&1 || true
  hvp_args=(--samples 60000 --repeats 7 --no-single-thread --no-memory)
  eigs_args=(--samples 60000 --k 30 --repeats 2 --methods hessjax,hessjax_nomc,scipy_default,pyhessian,matfree)
  sweep_args=(--train-samples 60000 --test-samples 10000 --k 10 --epochs 2 --lambdas 0:0.07:8
              --batches "${GPU_BATCHES:-1,8}" --torch-lambdas 1 --no-torch-warmup --repeats 1)
  proxy_args=(--proxy-samples 60000 --proxy-variants b1,b8,b8-lockstep)
  limits=(40 80 80 80)  # 280 s in all, plus start-up: within 5 minutes
fi
status run running

step() {  # step NAME LIMIT_S SCRIPT ARGS...
  local name=$1 limit=$2 script=$3
  shift 3
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $PYTHON benchmarks/$script $* --device $device --json $out/$name.json"
  timeout --kill-after=10 "$limit" "$PYTHON" "benchmarks/$script" "$@" --device "$device" --json "$out/$name.json" \
    > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  local state=ok
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then state=timeout; elif [[ $rc -ne 0 ]]; then state=failed; fi
  status "$name" "{\"state\": \"$state\", \"exit\": $rc, \"seconds\": $((SECONDS - t0))}"
  echo "== $name: $state (exit $rc, $((SECONDS - t0)) s)"
  [[ $state == ok ]]
}

failed=0
step hvp "${limits[0]}" hvp.py "${hvp_args[@]}" || failed=1
step eigs "${limits[1]}" eigs.py "${eigs_args[@]}" || failed=1
step sweep "${limits[2]}" sweep.py "${sweep_args[@]}" || failed=1
step proxies "${limits[3]}" sweep.py --proxies "${proxy_args[@]}" || failed=1
echo "== table"
"$PYTHON" benchmarks/gpu_table.py "$out" | tee "$out/table.txt"
if [[ $failed -eq 0 ]]; then status run ok; else status run "failed"; fi
echo "results in $out (gpu_run.json: status of each step)"
exit $failed
