.PHONY: run test check-env lint bench soak migrate install clean screenshots

export LITELLM_LOCAL_MODEL_COST_MAP := True

run:  ## start the gateway on the embedded store (demo model and demo key included)
	@bash scripts/bootstrap.sh
	DEMO_API_KEY=$${DEMO_API_KEY:-sk-gw-demo} .venv/bin/python -m app

test:  ## the whole test-suite on private PostgreSQL and Redis; installs what is missing (see README)
	bash scripts/test.sh $(ARGS)

screenshots:  ## the dashboard's screenshots in docs/ (a browser-test run on the services of make test)
	SCREENSHOT_DIR=$(CURDIR)/docs bash scripts/test.sh tests/dashboard

check-env:  ## validate settings and reach every dependency (ARGS=--online also calls each provider)
	@bash scripts/bootstrap.sh
	.venv/bin/python check_env.py $(ARGS)

lint:  ## ruff (lint + format check) and mypy --strict on app/
	@bash scripts/bootstrap.sh --dev
	.venv/bin/ruff check app tests bench check_env.py
	.venv/bin/ruff format --check app
	.venv/bin/mypy app

bench:  ## side-by-side latency/throughput benchmark; writes docs/PERFORMANCE.md
	@bash scripts/bootstrap.sh --dev
	.venv/bin/python bench/run.py

soak:  ## bounded soak test: RSS and event-loop lag over time
	@bash scripts/bootstrap.sh --dev
	.venv/bin/python bench/run.py --soak $(or $(SECONDS),600)

migrate:  ## apply the SQL migrations to DATABASE_URL
	@bash scripts/bootstrap.sh
	.venv/bin/python -m app.store.migrations

install:
	bash scripts/bootstrap.sh --dev

clean:
	rm -rf .venv .data
