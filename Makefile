# Two commands for a fresh clone:
#   make demo   virtualenv, install, embedded PostgreSQL, migrate, the local model's ONNX graph, sample data,
#               worker, web server
#   make test   the whole test suite
#   make screenshots   docs/screenshots/*.png from the real demo (local model)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test install browser redis screenshots

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned here only: 2.13.0 is the CPU build on this machine's disk; unpinned, pip
	# would fetch a CUDA build of several GB. The package itself asks for torch>=2.1.
	# Elsewhere, TORCH_INDEX=https://download.pytorch.org/whl/cpu takes PyTorch's CPU build.
	$(PY) -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[local,dev]"
	touch $@

demo: install
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py semantic_prepare_model
	$(PY) manage.py load_demo_data
	@echo "Demo: http://$(HOST):$(PORT)/  admin: http://$(HOST):$(PORT)/admin/ (user admin, password admin)"
	$(PY) manage.py qcluster & worker=$$!; \
	trap 'kill -INT $$worker 2>/dev/null; wait $$worker' EXIT; \
	$(PY) manage.py runserver $(HOST):$(PORT)

test: install browser redis
	$(PY) -m pytest $(PYTEST_ARGS)

# docs/screenshots/*.png from the real demo (local model, demo data); not part of `make test`.
screenshots: install browser
	$(PY) -m benchmarks.screenshots

# The browser tests drive Debian's Chromium; install it when missing and we may.
browser:
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "Chromium is not installed and cannot be installed here: the browser tests will be skipped."; \
		fi; \
	fi

# The shared-broker test runs workers on Debian's redis-server; install it when missing and we may.
redis:
	@if ! command -v redis-server >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server is not installed and cannot be installed here: the Redis worker test will be skipped."; \
		fi; \
	fi
