# Two commands do everything; each sets the environment up on first use.
#   make run    a short nonstationary PPO run (HalfCheetah, friction shifts, L2-ER) -> runs/<name>/
#   make test   the test suite
#   make reproduce  the paper code's small permuted-MNIST sweep (4 methods x 3 seeds), then its
#               report: sweeps/permuted-mnist-small-cpu/report/report.md (30 min on 2 cores)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test reproduce lint bench plot clean gpu-wheels gpu-check

# One pip install; its byte-compiling (one file at a time) is done after it on every core
# instead, leaving out the packages' own test folders (18 % of the files; nothing imports
# them): 12 s sooner on 2 cores with them (92 s against 104 s, measured). Some packages ship
# files that do not compile (pip skips them too), so compileall's status is not the install's.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c constraints.txt torch -e ".[dev,envpool,video,slurm,ray,box2d]"
	$(PY) -m compileall -q -j 0 -x '/tests?/' $(VENV)/lib > /dev/null || true
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py ppo --preset demo

# Three tests at a time on 2 cores: part of the suite waits on real processes, W&B's timeouts
# or Ray, and a third worker fills those waits (measured: 7 min 31 s of tests at -n 3, 1.84
# cores busy, against 7 min 57 s to 8 min 45 s at -n 2); the tests on one Ray cluster run in
# one worker (xdist_group).
test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest -q -n 3 --dist loadgroup

reproduce: $(STAMP)
	$(PY) train.py sweep --config permuted-mnist-small-cpu
	$(PY) train.py report sweeps/permuted-mnist-small-cpu

# make plot RUN=runs/<name>: the diagnostics' PNGs into runs/<name>/plots/
plot: $(STAMP)
	$(PY) -m diagnostics.plot $(RUN)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/ppo_throughput.py

# The GPU check (docs/gpu.md): `make gpu-wheels` here, where there is a package index,
# then carry .gpu-wheels/ to the GPU machine and run `benchmarks/gpu_check.sh OUT_DIR` there.
gpu-wheels: $(STAMP)
	$(PY) benchmarks/gpu_wheels.py --out .gpu-wheels --gl-debs

# The same check on this machine's CPU at tiny sizes, installed from the folder alone.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_wheels.py --python-version $$($(PY) -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")') --out .gpu-wheels-local
	WHEELS=.gpu-wheels-local PYTHON=$(PY) benchmarks/gpu_check.sh gpu-check --dry-run

clean:
	rm -rf $(VENV) runs sweeps report wandb .pytest_cache .gpu-wheels .gpu-wheels-local gpu-check
