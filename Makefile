# grail-cluster: every target sets up what it needs, from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.grail-setup
SLURM_UP := tests/infra/slurm/up.sh
SLURM_DOWN := tests/infra/slurm/down.sh
SLURM_MULTI := tests/infra/slurm/multi.sh
DEMO_DIR ?= demo

.PHONY: setup browser render-deps test test-fast lint bench demo slurm-up slurm-down clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	# Created once: re-running `venv` over an existing one with another python3 on PATH re-points it at
	# that interpreter's stdlib and breaks every package already built for the first.
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev]'  # torch pinned here: a CPU build, no CUDA downloads
	# The tests' Kubernetes API emulator, outside site-packages: its pytest plugin must not load in other projects.
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade --target $(VENV)/test-tools 'kmock>=0.8'
	touch $(STAMP)

# Headless Chromium for the web viewer tests and bench (Debian's package; never `playwright install`).
browser:
	bash tests/infra/browser/setup.sh

# Offscreen GL for MuJoCo's CPU renderer (EGL on llvmpipe, OSMesa fallback): apt-installs only what is missing.
render-deps:
	bash tests/infra/render/setup.sh

# The full suite: unit, golden and property tests, plus the real local SLURM cluster
# (started here, stopped afterwards unless KEEP_SLURM=1) and the viewer in a real Chromium. The cluster,
# Chromium and every Python dependency are required here: missing, their tests fail instead of skipping.
test: setup browser render-deps
	bash $(SLURM_UP)
	bash $(SLURM_MULTI) up
	status=0; GRAIL_REQUIRE_SLURM=1 GRAIL_REQUIRE_BROWSER=1 GRAIL_REQUIRE_DEPS=1 $(PY) -m pytest -q $(PYTEST_ARGS) || status=$$?; \
	if [ -z "$$KEEP_SLURM" ]; then bash $(SLURM_MULTI) down; bash $(SLURM_DOWN); fi; \
	exit $$status

# Without the SLURM cluster (its tests skip).
test-fast: setup
	$(PY) -m pytest -q -m "not slurm" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check grail_cluster launchers sonic tests bench

# Every benchmark prints ours against the peer measured in the same run (figures: docs/benchmarks.md).
bench: setup browser
	$(PY) bench/bench_plan.py
	$(PY) bench/bench_merge.py
	$(PY) bench/bench_data.py
	$(PY) bench/bench_web.py
	$(PY) bench/bench_recheck.py
	bash $(SLURM_UP)
	$(PY) bench/bench_submit.py

# The main job: the whole lifecycle on this machine with the embedded CPU reference tracker
# (demo library -> train -> select -> eval shards -> render -> export -> merge -> web viewer).
# DEMO_ARGS takes Hydra overrides, e.g. DEMO_ARGS="cluster=slurm" (after `make slurm-up`).
demo: setup render-deps
	$(VENV)/bin/grail-cluster demo --out $(DEMO_DIR) $(DEMO_ARGS)

# Both clusters: the single-node one on localhost (the default for every client) and the multi-node one
# in namespaces (clients reach it with `eval "$$(bash tests/infra/slurm/multi.sh env)"`).
slurm-up:
	bash $(SLURM_UP)
	bash $(SLURM_MULTI) up

slurm-down:
	bash $(SLURM_MULTI) down
	bash $(SLURM_DOWN)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis
