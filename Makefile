# Two commands do all set-up from nothing: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch for this Makefile's venv: the CPU build on machines without a GPU (see the file).
# A GPU user runs `make test TORCH_CONSTRAINTS=` to keep the torch pip picks.
TORCH_CONSTRAINTS ?= constraints/torch-cpu.txt
BOOK_STAMP := $(VENV)/.installed-book
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# the miniature model samples faster on one thread, and two threads on a shared 2-core machine thrash
export OMP_NUM_THREADS ?= 1
# notebooks executed at once by `make test` (nbval, one kernel per worker) and `make book`: each runs on one
# thread, so two fill a 2-core machine; a notebook's cells always stay in one kernel, in order (loadscope)
NOTEBOOK_WORKERS ?= 2
export NOTEBOOK_WORKERS

.PHONY: demo test lab lint bench train report wheel-check book book-test lab-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rece-lite demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env -p no:randomly -n $(NOTEBOOK_WORKERS) --dist loadscope notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

lint: $(STAMP)
	$(BIN)/ruff check rece_lite tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/erase_speed.py

train: $(STAMP)
	$(BIN)/python -m rece_lite.tiny.train

report: $(STAMP)
	$(BIN)/python -m rece_lite.tiny.report

# Build the wheel, install it alone into a fresh venv, run the demo from there (no checkout on sys.path).
wheel-check: $(STAMP)
	rm -rf build dist /tmp/rece-lite-wheel-venv
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(PY) -m venv /tmp/rece-lite-wheel-venv
	/tmp/rece-lite-wheel-venv/bin/pip install --quiet $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) dist/*.whl
	cd /tmp && /tmp/rece-lite-wheel-venv/bin/rece-lite demo --out /tmp/rece-lite-wheel-demo --force

$(BOOK_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[dev,book]"
	touch $(BOOK_STAMP)

# The course as a static site in build/book (each notebook executed once, cached on its code and the library).
book: $(BOOK_STAMP)
	$(BIN)/python book/build.py

# Every page of the site in headless Chromium (console errors, missing images, broken links; screenshots),
# and the live attention explorer in JupyterLab.
book-test: $(BOOK_STAMP)
	$(BIN)/python -m pytest -q tests/test_book.py  # the Sphinx and browser tests that `make test` skips without the book extra
	$(BIN)/python book/check_site.py
	$(BIN)/python book/check_lab.py

lab-test: $(BOOK_STAMP)
	$(BIN)/python book/check_lab.py

clean:
	rm -rf $(VENV) .pytest_cache build dist
