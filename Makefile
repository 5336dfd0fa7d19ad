# grail-cluster: every target sets up what it needs, from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.grail-setup
SLURM_UP := tests/infra/slurm/up.sh
SLURM_DOWN := tests/infra/slurm/down.sh
DEMO_DIR ?= demo

.PHONY: setup test test-fast lint bench demo slurm-up slurm-down clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The full suite: unit, golden and property tests, plus the real local SLURM cluster
# (started here, stopped afterwards unless KEEP_SLURM=1).
test: setup
	bash $(SLURM_UP)
	status=0; GRAIL_REQUIRE_SLURM=1 $(PY) -m pytest -q $(PYTEST_ARGS) || status=$$?; \
	if [ -z "$$KEEP_SLURM" ]; then bash $(SLURM_DOWN); fi; \
	exit $$status

# Without the SLURM cluster (its tests skip).
test-fast: setup
	$(PY) -m pytest -q -m "not slurm" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check grail_cluster launchers sonic tests bench

# Every benchmark prints ours against the peer measured in the same run (figures: docs/benchmarks.md).
bench: setup
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_merge.py
	$(PY) bench/bench_data.py
	bash $(SLURM_UP)
	$(PY) bench/bench_submit.py

# The lifecycle as far as this version goes: a generated library, doctor, plan and the rendered
# jobs for every backend (nothing is submitted).
demo: setup
	$(PY) -m tests.libgen --out $(DEMO_DIR)/data/pickup_table --motions 24 --variant ha_pair
	mkdir -p $(DEMO_DIR)/SONIC/gear_sonic
	$(VENV)/bin/grail-cluster doctor $(DEMO_DIR)/data/pickup_table_ha pipeline=pnp_table
	$(VENV)/bin/grail-cluster plan data.motion_lib=$(DEMO_DIR)/data/pickup_table_ha sonic.root=$(DEMO_DIR)/SONIC \
		run.root=$(DEMO_DIR)/runs eval.num_shards=4 eval.sharding=balanced
	for cluster in local slurm "kubernetes cluster.image=registry.example/grail-sonic:demo"; do \
		$(VENV)/bin/grail-cluster render data.motion_lib=$(DEMO_DIR)/data/pickup_table_ha sonic.root=$(DEMO_DIR)/SONIC \
			run.root=$(DEMO_DIR)/runs eval.num_shards=4 eval.sharding=balanced cluster=$$cluster --out $(DEMO_DIR)/specs || exit 1; \
	done
	@echo "demo: library in $(DEMO_DIR)/data, plan in $(DEMO_DIR)/runs, job files in $(DEMO_DIR)/specs/{local,slurm,kubernetes}"

slurm-up:
	bash $(SLURM_UP)

slurm-down:
	bash $(SLURM_DOWN)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis
