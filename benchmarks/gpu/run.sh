#!/bin/bash
# One device call (issue 22), from the repository root with .whl/ and .peer/ carried (prepare.sh):
# one train.py experiment on the bundled sample, the PyTorch peer, then flaxcnn.bench, each within
# its share of seconds (0 skips a part; the bench's "rest" is what is left of call_s since the
# start); results to $OUT. The experiment goes first, as a cut-short run records no timing; the
# bench last, as it writes its JSON after every model.
#   bash benchmarks/gpu/run.sh [experiment_s=90] [peer_s=150] [plan=PLAN] [bench_s=rest]
#                              [call_s=585] [models=all] [peer_python=python3]
set -u
called=$(date +%s)
experiment_s=90 peer_s=150 bench_s=rest call_s=585 models=all peer_python=python3
# The peer's best mode per model in the 2026-11-28 call first, then both eager modes of the models
# it had no row for (torch.compile of those would take most of the share).
plan="comp:alexnet+nin+vgg11_small,fp32:googlenet+lenet_bn,bf16:resnet18"
plan+=",fp32:densenet+regnetx32+resnext50+inception_v3,bf16:densenet+regnetx32+resnext50+inception_v3"
for arg in "$@"; do
  case $arg in
    experiment_s=*|peer_s=*|plan=*|bench_s=*|call_s=*|models=*|peer_python=*) declare "$arg" ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
: "${OUT:?OUT must name the results folder}"
export OUT PYTHONUNBUFFERED=1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
python3 - <<'EOF'
import platform, sys
from importlib import metadata

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"

names = ("jax jaxlib jax-cuda12-plugin jax-cuda13-plugin flax optax orbax-checkpoint numpy protobuf "
         "absl-py PyYAML torch torchvision").split()
print("python", sys.version.split()[0], platform.machine(), *(f"{n} {version(n)}" for n in names))
EOF
export XLA_PYTHON_CLIENT_PREALLOCATE=true
quiet() { grep -v "^WARNING\|^I0000\|^W0000"; }  # absl and XLA log lines
seconds() { awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $1}"; }

if [ "$experiment_s" -gt 0 ]; then
  tmp=$(mktemp -d)
  shopt -s nullglob
  for wheel in .whl/*.whl .whl/plots/*.whl; do python3 -m zipfile -e "$wheel" "$tmp/site"; done
  # An output the carried wheels cannot give is turned off rather than failing the run.
  off=$(PYTHONPATH=$tmp/site python3 - <<'EOF'
import importlib, sys
for field, module in (("plots", "matplotlib.backends.backend_agg"), ("tensorboard", "flaxcnn.events")):
    try:
        importlib.import_module(module)
    except Exception as e:
        print(f"{field} off: {module} does not import ({e!r})", file=sys.stderr)
        print(f"--config.{field}=false")
EOF
)
  start=$(date +%s.%N)
  # Cold compilation and font caches of its own: the first run of a learner on this machine.
  PYTHONPATH=$tmp/site MPLCONFIGDIR=$tmp/matplotlib timeout -k 10 "$experiment_s" python3 train.py --config configs/batchnorm.py \
    --config.dataset=fashion_mnist_sample --workdir "$tmp/run" --compilation_cache "$tmp/cache" $off \
    2>&1 | quiet | tee "$tmp/run.log"
  status=${PIPESTATUS[0]}
  wall=$(seconds "$start")
  echo "train.py exit $status after $wall s"
  # The workdir but its checkpoints: run_info.json, metrics.jsonl, the pictures, the event file.
  mkdir -p "$OUT/experiment" && cp "$tmp/run.log" "$OUT/experiment/" &&
    find "$tmp/run" -maxdepth 1 -type f ! -name ".*" -exec cp {} "$OUT/experiment/" \; &&
    python3 - "$OUT/experiment/run_info.json" "$wall" <<'EOF' | tee "$OUT/experiment/summary.txt"
import json, sys
try:
    t = json.load(open(sys.argv[1]))["timing"]
except (OSError, KeyError):
    sys.exit(print("experiment: cut short, no timing in run_info.json"))
c = t["compilations"]
print(f"experiment: wall {sys.argv[2]} s, steps {t['train_seconds']:.1f} s, "
      f"evaluation {t['evaluate_seconds']:.1f} s, outputs and checkpoints "
      f"{t['outputs_and_checkpoints_seconds']:.1f} s, before first step "
      f"{t['seconds_before_first_step']:.1f} s, compilations {c['programs']} ({c['seconds']:.1f} s, "
      f"{c['from_cache']} from the cache); {t['seconds_since_start']:.1f} s by its own clock")
EOF
  rm -rf "$tmp"
fi

if [ "$peer_s" -gt 0 ]; then
  start=$(date +%s.%N)
  # The peer stops starting measurements 40 s before its share ends; a JSON line per measurement.
  PLAN="$plan" BUDGET_S=$(( peer_s - 40 )) timeout -k 10 "$peer_s" "$peer_python" .peer/torch_anchor.py 2>&1 |
    grep -v "^W1\|^I1\|Warning" | tee "$OUT/peer.log"
  echo "peer exit ${PIPESTATUS[0]} after $(seconds "$start") s"
fi

[ "$bench_s" = rest ] && bench_s=$(( call_s - ($(date +%s) - called) ))
if [ "$bench_s" -gt 0 ]; then
  start=$(date +%s.%N)
  timeout -k 10 "$bench_s" python3 -m flaxcnn.bench --models "$models" --dtype bfloat16 --e2e \
    --json "$OUT/flaxcnn.json" 2>&1 | quiet | tee "$OUT/bench.log"
  echo "flaxcnn.bench exit ${PIPESTATUS[0]} after $(seconds "$start") s"
else
  echo "flaxcnn.bench skipped: $bench_s s"
fi
