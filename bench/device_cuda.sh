#!/usr/bin/env bash
# The NVIDIA figures of bench/README.md, on the library's device machine (no internet, 64 MiB a call).
# Here first: ../shared/gpu/prepare-mlx-cuda (.gpu/a, .gpu/b: mlx + mlx-cuda-13 for Python 3.12), then
#   python bench/random_weights.py <all-MiniLM-L6-v2 dir> .gpu/b/model --no-weights
#   mkdir -p .gpu/b/corpus && cp ../shared/bench/*.txt .gpu/b/corpus/
# Device call 1 (carry .gpu/a): mkdir -p /tmp/keep && cp -r .gpu/a /tmp/keep/
# Device call 2 (carry .gpu/b), at once: bash bench/device_cuda.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/b/*.whl
cat /tmp/keep/a/part.0 .gpu/b/part.1 | xz -d | tar x -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 bench/random_weights.py .gpu/b/model /tmp/model
python3 -c "import mlx.core as mx, torch, sentence_transformers as st; print('mlx', mx.__version__, mx.default_device(), '| torch', torch.__version__, '| sentence-transformers', st.__version__)"
common=(--model /tmp/model --corpus-dir .gpu/b/corpus)
echo "== engine vs sentence-transformers, float16 on the GPU"
python3 bench/bench_engine.py --device cuda "${common[@]}" --sentences 13295 --passages 1335 --repeats 3
echo "== fidelity and speed in float32 on the GPU"
python3 bench/bench_engine.py --device cuda --dtype float32 "${common[@]}" --sentences 4000 --passages 400 --repeats 1
for tokens in 8192 32768; do
  echo "== engine alone, batches of $tokens tokens (default 16384)"
  python3 bench/bench_engine.py --only embed --batch-tokens $tokens "${common[@]}" --sentences 13295 --passages 1335 --repeats 2
done
for corpus in sentences passages; do
  echo "== whole process, file to Parquet: $corpus"
  python3 bench/bench_cli.py --device cuda --part throughput --corpus $corpus --rows 20000 "${common[@]}"
  python3 bench/bench_cli.py --device cuda --part throughput --corpus $corpus --rows 20000 --repeat 4 "${common[@]}"
done
