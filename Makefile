# The README's two commands are `make demo` and `make test`; the rest are conveniences.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)/dags:$(CURDIR):$(CURDIR)/tools
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Demo inputs: `make demo INPUT=s3://bucket/prefix/ INDEX=my-index ID_FIELD=doc_id
# TEXT_FIELD=body METADATA=lang,year FORMAT=parquet` (README: make demo on your own data)
INPUT ?=
INDEX ?=
ID_FIELD ?=
TEXT_FIELD ?=
METADATA ?=
FORMAT ?=
# Chaos options: `make chaos CHAOS_ARGS="--runs 5 --seed 7"` (scripts/chaos.py --help);
# `CHAOS_ARGS="--executor celery"` runs it on redis + two Celery workers (kill mode `worker`).
CHAOS_ARGS ?=
# `make sagemaker-model ARGS="--bucket B --role-arn ARN --endpoint E --dry-run"`
ARGS ?=

.PHONY: help bootstrap demo test test-unit test-integration test-dags test-devstack test-tooling lint devstack devstack-down devstack-status devstack-env airflow bench chaos clean sagemaker-model

help:
	@echo "make demo           run the batch embeddings DAG on the devstack with the sample data"
	@echo "make test           ruff + the whole test suite (every tier under tests/)"
	@echo "make test-unit      ruff + tests/unit: the library alone, no services, no network (<1 min)"
	@echo "make test-integration / test-dags / test-devstack / test-tooling   one tier of tests/"
	@echo "make devstack       start local S3 + SageMaker + OpenSearch/ML Commons (.devstack/)"
	@echo "make devstack-down  stop what make devstack started"
	@echo "make airflow        airflow standalone with the devstack's connections preset"
	@echo "make bench          benchmarks against the naive way (bench/)"
	@echo "make sagemaker-model package the model + inference code, upload, create the SageMaker model (ARGS=...)"
	@echo "make chaos          20 demo runs under real Airflow, a task SIGKILLed in each (~17 min)"
	@echo "make clean          remove .venv, .devstack and caches"

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@$(PY) scripts/demo.py $(if $(INPUT),--input "$(INPUT)") $(if $(INDEX),--index "$(INDEX)") \
		$(if $(ID_FIELD),--id-field "$(ID_FIELD)") $(if $(TEXT_FIELD),--text-field "$(TEXT_FIELD)") \
		$(if $(METADATA),--metadata "$(METADATA)") $(if $(FORMAT),--format "$(FORMAT)")

test: bootstrap
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# One tier each (the directories under tests/ are the tiers): unit needs nothing running;
# integration/dags/devstack start S3, OpenSearch and SageMaker stand-ins themselves.
test-unit: bootstrap
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests/unit

test-integration test-dags test-devstack test-tooling: test-%: bootstrap
	$(PY) -m pytest tests/$*

lint: bootstrap
	$(VENV)/bin/ruff check .

devstack: bootstrap
	@$(PY) -m devstack up

devstack-down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; else echo "no .venv: nothing to stop"; fi

devstack-status: bootstrap
	@$(PY) -m devstack status

devstack-env: bootstrap
	@$(PY) -m devstack env

airflow: bootstrap devstack
	@./scripts/airflow-standalone.sh

bench: bootstrap
	@$(PY) bench/run.py

sagemaker-model: bootstrap
	@$(PY) -m batchvec.model.container $(ARGS)

chaos: bootstrap
	@$(PY) scripts/chaos.py $(CHAOS_ARGS)

clean: devstack-down
	rm -rf $(VENV) .devstack airflow-home .pytest_cache .ruff_cache bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
