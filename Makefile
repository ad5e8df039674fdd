# tpx: two commands on a fresh machine.
#   make figures   create/update .venv, then run every notebook headless (papermill) -> figures/
#   make test      create/update .venv, then the whole test suite, notebooks included (nbmake)
# The venv is (re)built only when pyproject.toml is newer than the stamp .venv/.installed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Installed before the package so that `torch>=2.4` is already met: on a CPU-only machine
# pip would otherwise fetch a multi-GB CUDA build. Override for a GPU machine, e.g. TORCH=torch.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv figures fast-figures test clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

figures: venv
	$(BIN)/python -m tpx reproduce

fast-figures: venv
	$(BIN)/python -m tpx reproduce --fast

test: venv
	TPX_STATIC_WIDGETS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Build outputs and caches; keeps .venv (see distclean) and the committed figures/.
clean:
	rm -rf build .pytest_cache tpx.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
