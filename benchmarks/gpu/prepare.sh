#!/bin/bash
# Run here, where pip works, before a device call: fills .whl/ with the wheels train.py needs that
# the GPU machine lacks and copies the PyTorch peer into .peer/; the call carries both (run.sh).
#   bash benchmarks/gpu/prepare.sh [path of torch_anchor.py, default ../shared/bench/torch_anchor.py]
set -eu
cd "$(dirname "$0")/../.."
peer=${1:-../shared/bench/torch_anchor.py}
pin() { grep -m1 -i "^$1==" requirements.txt; }
rm -rf .whl .peer
mkdir -p .whl/plots .peer
# Pure Python: the config (ml_collections), the progress bar (tqdm), the event files (tensorboard).
pip download -q --no-deps -d .whl "$(pin ml-collections)" "$(pin tqdm)" "$(pin tensorboard)"
# matplotlib for the plots (plots=True, the default), as CPython 3.12 x86_64 wheels; the versions
# not in requirements.txt are those the lock resolved to.
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl/plots \
  "$(pin matplotlib)" "$(pin pillow)" contourpy==1.3.3 kiwisolver==1.5.1 fonttools==4.68.0 \
  cycler==0.12.1 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6 packaging==26.4
cp "$peer" .peer/
ls .whl .whl/plots .peer
du -sh .whl .peer
