# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PORTAL_DATA_DIR ?= $(CURDIR)/var
PORT ?= 8000

.PHONY: run test lint format venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Embedded defaults: SQLite, filesystem storage and a filesystem Celery broker under var/,
# whatever the shell exports: a database or key left set for other work must not get the
# demo clinic, its operator and their printed passwords.
EMBEDDED := env -u DATABASE_URL -u DATABASE_URL_FILE -u REDIS_URL -u REDIS_URL_FILE \
	-u PORTAL_MASTER_KEY -u PORTAL_MASTER_KEY_FILE -u PORTAL_KEY_PROVIDER -u PORTAL_KMS_KEY_ID
run: export DEBUG = 1
run: export PORTAL_BASE_URL = http://127.0.0.1:$(PORT)
run: $(STAMP)
	$(EMBEDDED) $(PY) manage.py migrate --noinput
	$(EMBEDDED) $(PY) manage.py init_master_key
	$(EMBEDDED) $(PY) manage.py bootstrap_demo
	@echo "Starting the portal on http://127.0.0.1:$(PORT)/ (Ctrl-C stops everything)."
	@$(EMBEDDED) bash -c 'trap "kill 0" EXIT; \
		$(VENV)/bin/celery -A portal worker --beat --pool=solo --loglevel=INFO \
			--schedule "$$PORTAL_DATA_DIR/celerybeat-schedule" & \
		$(PY) manage.py runserver 127.0.0.1:$(PORT) & \
		wait'

# Tests run with DEBUG off, like production; the key is for the test run only.
test: export SECRET_KEY ?= test-only-secret-key-not-for-production-0123456789abcdefghij
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/pytest

lint: export SECRET_KEY ?= test-only-secret-key-not-for-production-0123456789abcdefghij
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) bench/ingest_bench.py
	BENCH_STOW_MB=1024 $(PY) bench/stow_memory.py
	$(PY) bench/render_memory.py
	$(PY) bench/orthanc_compare.py
	$(PY) bench/viewer_bench.py
	$(PY) bench/audit_study_filter.py

clean:
	rm -rf $(VENV) .pytest_cache
