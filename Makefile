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

.PHONY: demo test test-fast test-isolation venv lint clean

venv: $(STAMP)

$(STAMP): requirements/constraints.txt requirements/dev.txt $(foreach p,$(PACKAGES),packages/$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt \
		$(foreach p,$(PACKAGES),-e packages/$(p))
	@! $(BIN)/pip show --quiet torchvision 2>/dev/null || (echo "torchvision is installed in $(VENV): never install it (README)"; exit 1)
	touch $(STAMP)

# The main job. For now the data part: synthesize, shard, validate, summarise.
demo: $(STAMP)
	$(BIN)/vt-data synth --out $(RUN)/data --seed 0
	$(BIN)/vt-data validate $(RUN)/data/train.jsonl --video-root $(RUN)/data
	$(BIN)/vt-data shard $(RUN)/data/train.jsonl --video-root $(RUN)/data --out $(RUN)/shards/train
	$(BIN)/vt-data shard $(RUN)/data/test.jsonl --video-root $(RUN)/data --out $(RUN)/shards/test
	$(BIN)/vt-data stats $(RUN)/shards/train $(RUN)/shards/test

# The whole suite, then vt-data installed alone in its own venv (proves per-package reuse).
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) test-isolation

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-isolation: $(STAMP)
	$(BIN)/tox -e py311-test-vt-data

lint: $(STAMP)
	$(BIN)/ruff check packages tests experiments

clean:
	rm -rf $(VENV) .tox runs
