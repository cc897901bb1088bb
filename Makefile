# Two commands do everything; each sets the environment up on first use.
#   make run    a short nonstationary PPO run (HalfCheetah, friction shifts, L2-ER) -> runs/<name>/
#   make test   the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench plot clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,envpool,video]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py ppo --preset demo

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q

# make plot RUN=runs/<name>: the diagnostics' PNGs into runs/<name>/plots/
plot: $(STAMP)
	$(PY) -m diagnostics.plot $(RUN)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/ppo_throughput.py

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
