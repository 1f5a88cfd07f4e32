# The README's two commands: `make book` and `make test`. Both create .venv and install the
# package with the pinned versions of constraints.txt on first use.
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= smoke
JOBS    ?= 2
PY      := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: book test install clean

book: $(VENV)/.installed  ## run every notebook of PROFILE with papermill, then render the HTML book
	$(PY) -m simplemix.cli run --profile $(PROFILE) --jobs $(JOBS)
	$(PY) -m simplemix.cli book --run runs/$(PROFILE)

# Two pytest workers (each test file on one): the chapter batches of the smoke and tiny-hub books keep both cores
# busy only part of the time, and the unit tests and notebooks fill the rest; the run store's locks keep a stage
# that two of them ask for computed once.
test: $(VENV)/.installed  ## unit and integration tests, the smoke and tiny-hub books, then every notebook (nbmake)
	$(PY) -m pytest -n $(JOBS) --dist loadfile tests --nbmake notebooks --nbmake-timeout=1800

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev,eval]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

clean:
	rm -rf $(VENV) runs _build
