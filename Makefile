# Two commands on a fresh machine:  `make demo` (set up + the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned torch lets pip pick a newer multi-GB build. Override for your platform/CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast style quality clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: distill the shipped CNN teacher into CompactCNN on the shipped CIFAR-10 sample, train the same-budget
# baseline, evaluate all three and write the table and plots to outputs/demo. On a GPU the recipe trains in bf16 where
# the GPU has it. Without one, on a CPU that multiplies bf16 in hardware (AMX, or AVX512-BF16), it runs in bf16
# autocast: 2x faster than float32 for CompactCNN on both kinds (RESULTS.md). The malloc settings keep freed buffers in
# the heap (benchmarks/RESULTS.md: page faults otherwise cost CPU training 6-19%).
demo: install
	@flags=$$(grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null && $(BIN)/python -c "import sys, torch; sys.exit(torch.cuda.is_available())" && echo "--bf16 --use_cpu"); \
	echo "python examples/distill.py --baseline --output_dir outputs/demo --overwrite_output_dir $$flags"; \
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
	$(BIN)/python examples/distill.py --baseline --output_dir outputs/demo --overwrite_output_dir $$flags

test: install
	$(BIN)/python -m pytest

# The fast tier while working: every test but those marked slow (under a minute on 2 cores).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

style: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
