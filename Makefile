# Quick start:  `make train` (the main job)   `make test` (the full test suite)
# Both create ./.venv on first use and install minillm with its dev extras into it.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

.PHONY: install train test test-gpu test-integration sync docs lab clean

$(PY):
	python3 -m venv $(VENV)

# torch first: without a GPU take the CPU build (a bare `pip install torch` fetches several GB of CUDA libraries).
$(VENV)/.installed: $(PY) setup.py settings.ini
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install "torch>=2.6"; \
	  else $(PIP) install "torch>=2.6" --index-url https://download.pytorch.org/whl/cpu || $(PIP) install "torch>=2.6"; fi; }
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/minillm train $(ARGS)

test: install
	$(PY) -m pytest -n 2 $(ARGS)

test-gpu: install
	$(PY) -m pytest -m gpu $(ARGS)

# what needs an outside program: llama.cpp agrees with the GGUF export (needs llama-cpp-python, see
# tests/integration/test_llama_cpp.py); a one-node Slurm runs the training and preparation templates (as root: the
# tests set Slurm up with examples/slurm/local-cluster.sh). Pick one with ARGS, e.g. ARGS="-k slurm".
test-integration: install
	$(PY) -m pytest -m integration $(ARGS)

# export notebooks to the package, clean them, regenerate README.md; CI fails if this changes anything
sync: install
	$(VENV)/bin/nbdev_export
	$(VENV)/bin/nbdev_clean
	$(PY) .ci/readme.py

# the course as a website: every chapter with its saved outputs (nothing is executed), HTML in _docs/
docs: install
	$(PY) docs/build.py

lab: install
	$(VENV)/bin/jupyter lab nbs

clean:
	rm -rf $(VENV) build dist *.egg-info _proc _docs
