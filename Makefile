# `make run` and `make test` each set everything up first; `make setup` is idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
WHISPER := openai-whisper==20250625

.PHONY: setup run test lint bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# Without an NVIDIA GPU take the CPU build of torch (a range would pull a multi-GB CUDA build).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# The GPT-2 BPE ranks ship inside openai-whisper's package; we need only that file, not its deps.
	$(PY) -m pip install -q --no-deps $(WHISPER)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# The optional Ray extra (`--on ray`); the tests start a real local Ray head.
	$(PY) -m pip install -q "ray[default,train]==2.60.0"
	command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)
	# The storage tests start a throwaway PostgreSQL 15 server (Debian's package).
	test -x /usr/lib/postgresql/15/bin/initdb || (apt-get update -q && apt-get install -y -q postgresql)
	touch $@

run: setup
	$(VENV)/bin/gptdash serve $(if $(ADDRESS),--address $(ADDRESS)) $(if $(PORT),--port $(PORT))

# Two pytest workers (pytest-xdist); a module's tests, and all the Ray tests, stay on one
# worker, the slowest first (tests/conftest.py). TEST_WORKERS=0: one at a time, in this process.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/dashboard_data.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
