# Two commands do everything on a fresh machine with Python and make:
#   make demo   - install, then run the example app's migrations end to end
#   make test   - install with test extras, then lint, type-check and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-quick crashtest crashtest-long modeltest-long clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks examples
	$(BIN)/ruff format --check src tests scripts benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

crashtest: $(STAMP)
	$(BIN)/python scripts/crashtest.py --quick

crashtest-long: $(STAMP)
	$(BIN)/python scripts/crashtest.py --keys 1000000 --kills 200 --chunk 10000

# The model-based test of tests/test_model.py at length; CI runs a few examples of it.
modeltest-long: $(STAMP)
	PEBBLE_MIGRATE_MODEL_EXAMPLES=1000 PEBBLE_MIGRATE_MODEL_STEPS=40 \
	PEBBLE_MIGRATE_MODEL_TALLY=benchmarks/results/model-long.json \
	$(BIN)/pytest -q tests/test_model.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-data .mypy_cache .ruff_cache .pytest_cache .hypothesis
