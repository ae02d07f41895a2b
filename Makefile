# Each target creates .venv and installs the project on first use, with the pinned known-good versions of
# constraints.txt (torch and torchvision first, from the local index); it reinstalls when the project's
# packaging files or the pins change. `make constraints` rewrites the pins from a working .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench clean constraints

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/flowalign demo

bench: $(STAMP)
	$(PY) scripts/benchmark.py

# the header comments of constraints.txt are kept; the pins are the .venv's packages, the project excluded
constraints: $(STAMP)
	{ grep '^#' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
