# The two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need (Python deps, Go-built tools, skopeo) is installed on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit e2e lint tools gitops venv clean manifests bench

$(STAMP): pyproject.toml devenv/pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]' -e ./devenv
	@touch $@

venv: $(STAMP)

tools:
	@bash tests/cluster/build.sh >/dev/null

## Argo CD's and Flux's own code for the e2e tests (tests/gitops), under its own cache key.
gitops:
	@bash tests/gitops/build.sh >/dev/null

## Run the demo: local control plane + registry + operator.
demo: venv tools
	$(BIN)/ocireg-demo $(ARGS)

## Run every test: lint, unit and end-to-end against the real local control plane.
test: venv tools gitops lint
	$(BIN)/pytest tests

## Unit tests only: no cluster, no Go build.
unit: venv
	$(BIN)/pytest tests -m "not e2e"

e2e: venv tools gitops
	$(BIN)/pytest tests -m e2e

## The scale benchmark's three shapes (bench/run_all.sh; ARGS=--admission for the webhook on).
## About two hours or more on 2 cores; one shape: make bench SHAPES=1k.
bench: venv tools
	SHAPES="$(or $(SHAPES),1k 10k tenants)" PYTHON=$(BIN)/python bash bench/run_all.sh $(ARGS)

## Style, types (mypy: strict on the product, looser on devenv) and the import contracts
## between rooms (import-linter, [tool.importlinter] in pyproject.toml).
lint: venv
	$(BIN)/ruff check operator devenv tests bench
	$(BIN)/ruff format --check operator devenv tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

## Copy the generated CRDs, the ClusterRole, the admission policies, the alerts and the dashboard
## into manifests/ and the Helm chart.
manifests:
	cp crds/*.yaml manifests/crds/
	cp crds/*.yaml helm/ocireg/crds/
	cp manifests/rbac/clusterrole.yaml helm/ocireg/files/clusterrole.yaml
	cp manifests/rbac/token-request-policy.yaml helm/ocireg/files/token-request-policy.yaml
	cp manifests/rbac/own-objects-policy.yaml helm/ocireg/files/own-objects-policy.yaml
	cp manifests/rbac/service-account-policy.yaml helm/ocireg/files/service-account-policy.yaml
	cp manifests/admission/webhook-policy.yaml helm/ocireg/files/webhook-policy.yaml
	cp manifests/monitoring/prometheus-operator/prometheusrule.yaml helm/ocireg/files/prometheusrule.yaml
	cp manifests/monitoring/grafana/dashboard.json helm/ocireg/files/dashboard.json

clean:
	rm -rf $(VENV) .pytest_cache
