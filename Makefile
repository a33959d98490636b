# mmsearch: `make demo` runs the product, `make test` runs the suite. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= demo/grocery/products.jsonl
ADDR   ?= 127.0.0.1:8000
export DJANGO_SETTINGS_MODULE := mmsearch.settings

.PHONY: install services services-stop migrate demo test train bench clean-var browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services: install
	$(BIN)/python manage.py services start

services-stop:
	$(BIN)/python manage.py services stop

migrate: services
	$(BIN)/python manage.py migrate --no-input

demo: migrate
	$(BIN)/python manage.py demo --data $(DATA) --addr $(ADDR)

# The browser tests (tests/web/test_e2e_browser.py) drive Debian's Chromium through Playwright; Playwright's
# own browser download is never used. Installs it when missing (needs root, as in CI).
export CHROMIUM ?= /usr/bin/chromium
browser:
	test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: services browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-var: services-stop
	rm -rf var
