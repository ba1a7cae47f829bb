# The two commands of README.md, and the steps they are made of.
# Every target creates the virtualenv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The TypeScript package (clients/typescript): npm ci from its lockfile (Node 20 and npm needed).
TS_DIR := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed
# Everything tools/codegen.py writes; committed, and checked for drift by `make contract`.
GENERATED := clients/python/cpa clients/typescript/src/gen deploy/api.binpb deploy/openapi

.PHONY: demo test lint typecheck contract codegen codegen-check unit typescript clean chromium prometheus

# The portal -> PDF -> mail demo. Chromium is installed first when we may (root); where a part is
# still missing, `cpa demo` names it and runs the minimal demo of the built-in actions instead.
demo: $(STAMP)
	-@$(MAKE) --no-print-directory chromium
	$(BIN)/cpa demo --or-minimal

test: lint typecheck contract unit typescript

# Debian's Chromium for the browser executor (Playwright's own browser download does not work
# offline). Installs it when missing and we are root; otherwise says the command to run.
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "Chromium is missing: run 'sudo apt-get install -y chromium' (or 'sudo make chromium')"; exit 1; fi

# Debian's Prometheus (promtool) and Alertmanager (amtool): the metrics tests start a real
# Prometheus and check the rules, the dashboard's PromQL and the Alertmanager example with them.
prometheus:
	@if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/amtool ]; then echo "$$(/usr/bin/prometheus --version 2>&1 | head -1)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq prometheus prometheus-alertmanager; \
	else echo "Prometheus is missing: run 'sudo apt-get install -y prometheus prometheus-alertmanager' (or 'sudo make prometheus')"; exit 1; fi

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./clients/python -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint deploy/Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

# buf lint, breaking check against the previous commit, and generated code in step with proto/.
contract: $(STAMP)
	$(BIN)/buf lint
	bash tools/buf_breaking.sh $(BIN)/buf
	$(MAKE) codegen-check

codegen: $(STAMP) $(TS_STAMP)
	$(BIN)/python tools/codegen.py

codegen-check: codegen
	@changes=$$(git status --porcelain -- $(GENERATED)); \
	if [ -n "$$changes" ]; then \
		echo "Generated code is out of date with proto/ (run 'make codegen' and commit):"; \
		echo "$$changes"; git --no-pager diff --stat -- $(GENERATED); exit 1; \
	fi; echo "generated code is in step with proto/"

unit: $(STAMP) chromium prometheus
	$(BIN)/pytest

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or later"; exit 1; }
	cd $(TS_DIR) && npm ci --no-audit --no-fund
	touch $(TS_STAMP)

# Type-checks and builds the package, then runs its tests against a live `cpa serve` they start.
typescript: $(STAMP) $(TS_STAMP)
	cd $(TS_DIR) && npm run build && npm test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(TS_DIR)/node_modules $(TS_DIR)/dist $(TS_DIR)/build
