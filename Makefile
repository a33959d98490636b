# mmsearch: `make demo` runs the product, `make test` runs the suite. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= demo/grocery/products.jsonl
ADDR   ?= 127.0.0.1:8000
export DJANGO_SETTINGS_MODULE := mmsearch.settings
# Every target here is development (demo, tests, training, benchmarks): DEBUG on, the development SECRET_KEY.
# Production sets DEBUG=0 and its own SECRET_KEY (deploy/README.md).
export DEBUG ?= 1

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

# The suite's settings (tests/settings.py): the exported DJANGO_SETTINGS_MODULE above would win over pytest's.
test: services browser
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python -m pytest $(PYTEST_ARGS)

# Embedding pipeline images/s vs the raw forward pass (bench/pipeline.py; BENCH_ARGS="--images 128" etc.).
# Search latency (API vs SQL vs encoding) and quality (P@10 per mode, grocery photo accuracy) on the fashion
# catalog of the database named by MMSEARCH_DB_NAME (README "Search").
# Vector search side by side (bench/vector_search.py): the catalog's vectors and VECTORS synthetic ones, indexes
# built with BENCH_THREADS threads by both engines; the API under load at 1, 4 and 16 clients
# (bench/results/load-<n>.json).
# Caption decode cost, greedy and beam 3 (bench/captioner.py, the captioner make train wrote).
VECTORS ?= 1000000
BENCH_THREADS ?= 2
bench: services
	$(BIN)/python bench/pipeline.py $(BENCH_ARGS)
	$(BIN)/python bench/search_latency.py --understanding-queries 200 --understanding-rounds 2
	$(BIN)/python bench/search_quality.py --grocery
	$(BIN)/python bench/vector_search.py --real --synthetic $(VECTORS) --threads $(BENCH_THREADS)
	$(BIN)/python bench/captioner.py --model $(CAPTIONER)
	for n in 1 4 16; do $(BIN)/python bench/load.py --clients $$n --out bench/results/load-$$n.json $(LOAD_ARGS) || exit 1; done
	$(BIN)/python bench/qa_latency.py

clean-var: services-stop
	rm -rf var

# The default product embedder (README "Training and evaluation"): trained on ../shared/datasets (fashion
# products, grocery products + train photos) into models/embedder, where the default settings find it; then the
# zero-shot tagger's calibration and adapters (docs/tagging.md) fitted on the fashion products held out by title
# (the embedder never saw them: scores on its training products are sharper than on new ones), with the fashion
# products it trained on as the neighbour cache (labelled images that vote), into
# models/embedder/tagger.json; then evaluated (corpus: the whole fashion folder) on the held-out titles (retrieval;
# tagging uncalibrated, as they fitted the calibration), on the fashion products held out by sku (retrieval and the
# calibrated tagger), and on the grocery val photos. Image vectors are cached per model in $(CACHE), so the fashion images are embedded once.
# Resumable: rerunning continues an interrupted run. TRAIN_ARGS adds flags (e.g. --epochs 2).
SHARED_DATA ?= ../shared/datasets
EMBEDDER    ?= models/embedder
CACHE       ?= models/cache
# Then the captioner (docs/captioning.md) on the fashion products into models/captioner, reading the trunk grids
# the embedder's run cached, evaluated on its held-out titles against two baselines. CAPTION_ARGS adds flags.
CAPTIONER   ?= models/captioner
# Then the answerer (docs/qa.md) on the fashion products into models/answerer (the default settings' `answerer`),
# reading the same trunk grids and the captioner's cell colours from $(CACHE) and the embedder's image head and
# value prompts (the zero-shot scores its calibration combines); evaluated on its held-out titles (accuracy per
# question type against the majority and late-fusion baselines) and on the grocery fact questions of
# qa/data/grocery-facts.jsonl. QA_ARGS adds flags (the defaults are train_answerer's default preset).
ANSWERER    ?= models/answerer
train: install
	$(BIN)/python manage.py train_embedder --data $(SHARED_DATA)/fashion/products.jsonl \
	  --data $(SHARED_DATA)/grocery/products.jsonl --photos $(SHARED_DATA)/grocery/photos-train.jsonl \
	  --out $(EMBEDDER) --replace --threads 2 $(TRAIN_ARGS)
	$(BIN)/python manage.py calibrate_tagger --threads 2 --model $(EMBEDDER) --data $(EMBEDDER)/heldout.jsonl --flip \
	  --calibration-share 0.4 --out $(EMBEDDER)/tagger.json \
	  --neighbours $(SHARED_DATA)/fashion/products.jsonl --exclude $(EMBEDDER)/heldout-products.jsonl \
	  --json $(EMBEDDER)/tagger-report.json --plots $(EMBEDDER)/plots-tagger --cache-dir $(CACHE)
	$(BIN)/python manage.py evaluate --threads 2 --model $(EMBEDDER) --data $(EMBEDDER)/heldout.jsonl \
	  --corpus $(SHARED_DATA)/fashion/products.jsonl --json $(EMBEDDER)/eval-fashion.json --plots $(EMBEDDER)/plots-fashion \
	  --cache-dir $(CACHE) --no-calibration
	$(BIN)/python manage.py evaluate --threads 2 --model $(EMBEDDER) --data $(EMBEDDER)/heldout-products.jsonl \
	  --corpus $(SHARED_DATA)/fashion/products.jsonl --json $(EMBEDDER)/eval-fashion-products.json \
	  --plots $(EMBEDDER)/plots-fashion-products --cache-dir $(CACHE)
	$(BIN)/python manage.py evaluate --threads 2 --model $(EMBEDDER) --data $(SHARED_DATA)/grocery/products.jsonl \
	  --photos $(SHARED_DATA)/grocery/photos-val.jsonl --json $(EMBEDDER)/eval-grocery.json --plots $(EMBEDDER)/plots-grocery
	$(BIN)/python manage.py train_captioner --data $(SHARED_DATA)/fashion/products.jsonl --out $(CAPTIONER) \
	  --replace --threads 2 --cache-dir $(CACHE) $(CAPTION_ARGS)
	$(BIN)/python manage.py evaluate_captioner --threads 2 --model $(CAPTIONER) --data $(CAPTIONER)/heldout.jsonl \
	  --corpus $(SHARED_DATA)/fashion/products.jsonl --embedder $(EMBEDDER) --cache-dir $(CACHE) \
	  --json $(CAPTIONER)/eval-fashion.json
	$(BIN)/python manage.py train_answerer --data $(SHARED_DATA)/fashion/products.jsonl --out $(ANSWERER) \
	  --embedder $(EMBEDDER) --replace --threads 2 --cache-dir $(CACHE) $(QA_ARGS)
	$(BIN)/python manage.py evaluate_qa --threads 2 --model $(ANSWERER) --data $(ANSWERER)/heldout.jsonl \
	  --embedder $(EMBEDDER) --cache-dir $(CACHE) --json $(ANSWERER)/eval-fashion.json
	$(BIN)/python manage.py evaluate_qa --threads 2 --model $(ANSWERER) --data $(SHARED_DATA)/grocery/products.jsonl \
	  --facts qa/data/grocery-facts.jsonl --embedder none --cache-dir $(CACHE) --json $(ANSWERER)/eval-grocery-facts.json
