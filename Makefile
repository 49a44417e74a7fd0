# medcl: two commands do all set-up on a fresh machine.
#   make demo   venv + install, then a real training run on the bundled Hippocampus sample (CPU, minutes)
#   make test   venv + install, then the whole test suite (what CI runs; `make test-fast` skips the slow tests)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
MEDCL   := $(VENV)/bin/medcl
DEMO_DATA := demo/Task04_Hippocampus_sample
DEMO_OUT  := demo_runs
DEMO_RUN  := demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast lint clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first when none is importable: a bare `torch` requirement would pull CUDA wheels.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(MEDCL) data check $(DEMO_DATA) --no-progress
	$(MEDCL) data split $(DEMO_DATA) --labeled 24 --val 6 --seed 0 -o $(DEMO_OUT)/splits.json --force
	$(MEDCL) train configs/hippocampus/demo.yaml --data $(DEMO_DATA) --splits $(DEMO_OUT)/splits.json \
		--runs $(DEMO_OUT) --set tracking.run_name=$(DEMO_RUN) --no-progress
	$(MEDCL) evaluate --model $(DEMO_OUT)/runs/$(DEMO_RUN) --data $(DEMO_DATA) --splits $(DEMO_OUT)/splits.json \
		--subset val --runs $(DEMO_OUT) -o $(DEMO_OUT)/evaluations/$(DEMO_RUN)/summary.json --no-progress
	@echo
	@echo "Runs, checkpoints and the MLflow store (sqlite) are in $(abspath $(DEMO_OUT))"
	@echo "Review them in the MLflow UI:  $(MEDCL) ui --runs $(DEMO_OUT)   (http://127.0.0.1:5000)"

test: install
	$(VENV)/bin/pytest -q

# The edit-test loop: everything but the tests marked slow (DDP, workflows, notebooks, browser, kill/resume,
# the MLflow server, and every test that needs the 300-step trained_run fixture).
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check medcl tests benchmarks
	$(VENV)/bin/ruff format --check medcl tests benchmarks

clean-demo:
	rm -rf $(DEMO_OUT)
