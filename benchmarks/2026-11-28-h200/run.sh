#!/bin/bash
# One device call: flaxcnn.bench then the PyTorch peer, each within its share of the call's time.
# $1: flaxcnn models, $2: seconds for flaxcnn, $3: peer PLAN ("" = skip the peer), $4: seconds for the peer
# Run from the repository root with ../shared/bench/torch_anchor.py copied into .peer/; results go to $OUT.
set -u
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, jax, jaxlib, flax, optax, orbax.checkpoint as o, numpy, torch; print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
export XLA_PYTHON_CLIENT_PREALLOCATE=true
start=$(date +%s)
timeout $2 python3 -m flaxcnn.bench --models "$1" --dtype bfloat16 --e2e --json $OUT/flaxcnn.json 2>&1 | grep -v "^WARNING\|^I0000\|^W0000"
echo "flaxcnn.bench exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
if [ -n "$3" ]; then
  start=$(date +%s)
  PLAN="$3" BUDGET_S=$(( $4 - 40 )) timeout $4 python3 .peer/torch_anchor.py 2>&1 | grep -v "^W1\|^I1\|Warning"
  echo "peer exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
fi
