# Local development services, the same ones the tests start.
.PHONY: pg-up pg-down validate-stack
# A throwaway PostgreSQL on 127.0.0.1 (prints the admin DSN); data in .pg-local/.
pg-up: setup-test
	$(PYTHON) scripts/pg_cluster.py start
pg-down:
	$(PYTHON) scripts/pg_cluster.py destroy
# Check compose/, Prometheus rules, dashboards, Alloy/Loki configs without a Docker engine.
validate-stack: setup-test
	$(PYTHON) scripts/validate_stack.py
