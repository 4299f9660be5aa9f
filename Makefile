# Two commands matter (see README):
#   make test                 set up .venv (torch, ComfyUI 0.3.75, spaCy) and run the whole test suite
#   make demo [CKPT=file] [ARCH=sd15]   run a guided generation through real ComfyUI and write out/demo_report.json
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test lint demo parse-eval bench clean

setup:
	PYTHON=$(PY) VENV=$(VENV) bash scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PYTHON) -m pytest tests -q $(PYTEST_ARGS)

demo: setup
	$(PYTHON) scripts/demo.py $(if $(CKPT),--checkpoint "$(CKPT)") $(if $(ARCH),--arch $(ARCH)) $(if $(PROMPT),--prompt "$(PROMPT)")

parse-eval: setup
	$(PYTHON) benchmarks/parse_eval.py ../shared/data/parse_dev.jsonl

bench: setup
	$(PYTHON) benchmarks/guidance_overhead.py

clean:
	rm -rf out .cache
