# Entry points; `make setup` is idempotent (a second run takes seconds).
PY := .venv/bin/python

.PHONY: setup demo test test-all test-slow data benchmark clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

# Default suite: CPU, fast (slow end-to-end tests are deselected; `make test-all` runs them too).
test: setup
	@$(PY) -m pytest tests -m "not slow" -q

# exit 5 = no test selected: not a failure here
test-slow: setup
	@$(PY) -m pytest tests -m slow -q; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-all: setup
	@$(PY) -m pytest tests -q

benchmark: setup
	@$(PY) tools/analysis/benchmark_backbone.py --markdown docs/benchmarks_backbone_latest.md

clean:
	rm -rf work_dirs .pytest_cache
