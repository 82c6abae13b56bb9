# Two commands do everything on a fresh machine with Python and make:
#   make demo   - install, then run the example app's migrations end to end
#   make test   - install with test extras, then lint, type-check and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit coverage bench bench-quick crashtest crashtest-long \
        crashtest-kills modeltest-long sweep-long faults-long fuzz-long \
        reliability-long clean

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

# The whole suite under branch coverage (subprocesses included), then the floors:
# 95% for the package, 100% for the code that owns the state and the data's safety.
unit: $(STAMP)
	rm -rf .coverage-data && mkdir -p .coverage-data
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report --fail-under=95
	$(BIN)/coverage report --fail-under=100 $(FULLY_COVERED)

FULLY_COVERED := --include='src/pebble_migrate/state.py,src/pebble_migrate/executor.py,src/pebble_migrate/backup.py,src/pebble_migrate/restore.py'

coverage: unit
	$(BIN)/coverage html --directory .coverage-data/html

crashtest: $(STAMP)
	$(BIN)/python scripts/crashtest.py --quick

crashtest-long: $(STAMP)
	$(BIN)/python scripts/crashtest.py --keys 1000000 --kills 200 --chunk 10000

# The model-based test of tests/test_model.py at length; CI runs a few examples of it.
modeltest-long: $(STAMP)
	mkdir -p $(RESULTS)
	PEBBLE_MIGRATE_MODEL_EXAMPLES=150 PEBBLE_MIGRATE_MODEL_STEPS=40 \
	PEBBLE_MIGRATE_MODEL_TALLY=$(RESULTS)/model.json \
	$(BIN)/pytest -q tests/test_model.py

# The long modes of the reliability suite; each writes its counts to benchmarks/results/
# (the figures of docs/reliability.md). CI runs every one of them in its quick form.
RESULTS := benchmarks/results/reliability

crashtest-kills: $(STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/python scripts/crashtest.py --keys 50000 --kills 1000 --chunk 1000 \
	    --report $(RESULTS)/random-kills.json

sweep-long: $(STAMP)
	mkdir -p $(RESULTS)
	PEBBLE_MIGRATE_SWEEP_TALLY=$(RESULTS)/kill-sweep.json \
	$(BIN)/pytest -q tests/crash/test_kill_sweep.py

faults-long: $(STAMP)
	mkdir -p $(RESULTS)
	PEBBLE_MIGRATE_FAULTS=all PEBBLE_MIGRATE_FAULTS_TALLY=$(RESULTS)/faults.json \
	$(BIN)/pytest -q tests/crash/test_faults.py

# 3 fuzz tests x 33,334 examples: just over 100,000.
fuzz-long: $(STAMP)
	mkdir -p $(RESULTS)
	PEBBLE_MIGRATE_FUZZ_EXAMPLES=33334 PEBBLE_MIGRATE_FUZZ_TALLY=$(RESULTS)/fuzz.json \
	$(BIN)/pytest -q tests/test_fuzz.py

reliability-long: sweep-long faults-long fuzz-long crashtest-kills modeltest-long

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-data .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage-data
