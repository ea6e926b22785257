#!/usr/bin/env bash
# GPU side by side, nanoGPT vs gptdash, in ONE device call. Prepare once, here:
#   bash bench/gpu_side_by_side.sh --prepare /path/to/nanoGPT-checkout
# which fills ignored folders: third_party/nanoGPT (model.py, bench.py, configurator.py),
# third_party/gpt2.tiktoken, and .whl (wheels the GPU machine lacks). Then, via the device
# tool:  run(command="bash bench/gpu_side_by_side.sh", carry=["third_party", ".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  src="${2:?path to a nanoGPT checkout}"
  mkdir -p third_party/nanoGPT .whl
  cp "$src"/{model.py,bench.py,configurator.py} third_party/nanoGPT/
  .venv/bin/python -c 'from gptcore.tokenizer import gpt2_ranks_path as p; print(p())' \
    | xargs -I{} cp {} third_party/gpt2.tiktoken
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl sqlalchemy greenlet typing_extensions
  exit 0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export GPTDASH_GPT2_RANKS="$PWD/third_party/gpt2.tiktoken" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
python3 bench/gpu_side_by_side.py --batches "${BATCHES:-12,32}" "$@"
