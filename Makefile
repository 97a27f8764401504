# `make demo` and `make test` each create .venv and install rfprobe into it when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rfprobe-installed

.PHONY: install demo test bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

docs: $(STAMP)
	$(VENV)/bin/typer rfprobe.cli utils docs --name rfprobe --output docs/cli.md

clean:
	rm -rf demo-output .pytest_cache
