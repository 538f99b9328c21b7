# FlashLM: two commands on a fresh machine —  make demo  (prepare, train, eval, export, run)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/tinystories
# The demo trains a fixed amount of work, not a wall-clock budget, so every machine gets the same model:
# 300 steps of 8 x 256 tokens at lr 2e-3 (fp32 on CPUs without native bf16, bf16 where it is native).
DEMO_STEPS ?= 300
# torch is pinned to the CPU build. On machines where PyPI's torch wheel is the CUDA one, point pip at
# PyTorch's CPU wheel index, e.g.  make demo TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_INDEX ?=
# Outside clients the tests run for real (Node 20), versions locked in each folder's package-lock.json:
# clients/llama_cpp: node-llama-cpp's prebuilt CPU llama.cpp (--omit=optional skips its CUDA/Vulkan/other-OS
# builds: 83 MB instead of 730); clients/transformers_js: transformers.js on onnxruntime-node, whose
# postinstall would download CUDA binaries (ONNXRUNTIME_NODE_INSTALL=skip: the CPU ones are in the package).
# clients/web: onnxruntime-web and tokenizers.js for examples/web, playwright-core to drive Debian's chromium in the test.
LLAMA_CPP := clients/llama_cpp
TRANSFORMERS_JS := clients/transformers_js
WEB := clients/web
CHROMIUM ?= /usr/bin/chromium
# tcmalloc for flashlm-train (Debian's libgoogle-perftools4): flashlm.entry preloads it where it is installed
TCMALLOC := $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4) /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)

.PHONY: setup demo test fuzz bench lint clean default-model default-model-exports web fortunes fine-tune

setup: $(VENV)/.installed $(LLAMA_CPP)/node_modules/.installed $(TRANSFORMERS_JS)/node_modules/.installed $(WEB)/node_modules/.installed $(CHROMIUM) $(TCMALLOC)

# Without npm the clients are skipped here (and their tests skip); the Python side does not need them.
NPM_CI = if command -v npm >/dev/null; then cd $(dir $(@D)) && $(1) npm ci $(2) --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "note: npm not found, $(dir $(@D)) not installed (its tests will skip)"; fi

$(LLAMA_CPP)/node_modules/.installed: $(LLAMA_CPP)/package-lock.json
	@$(call NPM_CI,,--omit=optional)

$(TRANSFORMERS_JS)/node_modules/.installed: $(TRANSFORMERS_JS)/package-lock.json
	@$(call NPM_CI,ONNXRUNTIME_NODE_INSTALL=skip,)

$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	@$(call NPM_CI,,)

# Debian's chromium for the browser test (apt-get as root, as on CI); elsewhere install a Chromium and pass CHROMIUM=/path
$(CHROMIUM):
	@if command -v apt-get >/dev/null; then apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium); \
	else echo "note: no Chromium at $(CHROMIUM): install one and pass CHROMIUM=/path for the browser test"; fi

# Without apt-get (not Debian, not root) training keeps the system allocator: a note, not a failure.
$(TCMALLOC):
	@if command -v apt-get >/dev/null && (apt-get install -y -q libgoogle-perftools4 || (apt-get update -q && apt-get install -y -q libgoogle-perftools4)); \
	then :; else echo "note: tcmalloc not installed (flashlm-train uses the system allocator): install gperftools for faster training"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/flashlm-prepare $(DATA) --out data/tinystories
	$(BIN)/flashlm-train --data data/tinystories --out runs/demo --max-steps $(DEMO_STEPS) --grad-accum 2 --lr 2e-3 --warmup-steps 30 --eval-every 100 --force
	$(BIN)/flashlm-eval runs/demo/best --data data/tinystories --samples 1
	$(BIN)/flashlm-export runs/demo/best --out exports/demo --int8 --data data/tinystories --force
	$(BIN)/flashlm-run --model exports/demo --prompt "Once upon a time" --seed 0 --plan

# The shipped model (MODEL_CARD.md): the default recipe on tinystories-plus for 3,700 steps of 16 x 256 tokens
# (what 30 minutes on 2 threads buys on a 2-vCPU CPU with native bf16), fp32 so that every CPU trains the same
# model, seed 2 (seed 1337 is the recipe-search run), best checkpoint by validation; default-model-exports below.
PLUS ?= ../shared/data/tinystories-plus
DEFAULT_STEPS ?= 3700
PORTABLE_MODEL = models/flashlm-v10-fsp-onnx
CHECKPOINT_MODEL = models/flashlm-v10-fsp
default-model: setup
	$(BIN)/flashlm-prepare $(PLUS) --out data/tinystories-plus
	mkdir -p runs
	$(BIN)/flashlm-train --data data/tinystories-plus --out runs/default-model --threads 2 --no-bf16 --seed 2 --max-steps $(DEFAULT_STEPS) --eval-every 200 --quiet --force > runs/default-model.summary.json
	$(BIN)/python bench/train_record.py runs/default-model.summary.json --command "make default-model" --out results/default_model/train_summary.json
	cp runs/default-model/metrics.jsonl results/default_model/metrics.jsonl
	$(MAKE) default-model-exports

# The exports of runs/default-model/best: its weights as the shipped checkpoint folder (fp32 safetensors, config,
# tokenizer; no optimizer state: --init-from default starts a fresh one), the runtime's bundle (contrib ops, int8), the
# portable folder for other clients (plain ops, int8), the GGUF for llama.cpp, and fp32 + int8 for the card's figures.
default-model-exports:
	rm -rf $(CHECKPOINT_MODEL).tmp && mkdir -p $(CHECKPOINT_MODEL).tmp
	cp runs/default-model/best/model.safetensors runs/default-model/best/config.json runs/default-model/best/tokenizer.json $(CHECKPOINT_MODEL).tmp/
	rm -rf $(CHECKPOINT_MODEL) && mv $(CHECKPOINT_MODEL).tmp $(CHECKPOINT_MODEL)
	$(BIN)/flashlm-eval runs/default-model/best --data data/tinystories-plus
	$(BIN)/flashlm-export runs/default-model/best --out exports/default-model --int8 --data data/tinystories-plus --force
	$(BIN)/flashlm-export runs/default-model/best --out runtime/flashlm_runtime/default_model --ops contrib --int8 --int8-only --data data/tinystories-plus --force
	$(BIN)/flashlm-export runs/default-model/best --out $(PORTABLE_MODEL) --int8 --int8-only --data data/tinystories-plus --force
	$(BIN)/flashlm-export runs/default-model/best --format gguf --gguf-type q8_0 --out models/flashlm-v10-fsp.q8_0.gguf --data data/tinystories-plus --force
	$(BIN)/python bench/eval_export.py --model exports/default-model --bundle --data data/tinystories-plus --out results/default_model/eval.json

# The fine-tuning measurement (docs/import-and-fine-tune.md): Debian's fortunes, at the version it was measured on.
FORTUNES_VERSION = 1:1.99.1-7.3
fortunes:
	@dpkg-query -W -f='$${Version}' fortunes 2>/dev/null | grep -qx '$(FORTUNES_VERSION)' || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes=$(FORTUNES_VERSION) fortunes-min=$(FORTUNES_VERSION))

fine-tune: setup fortunes
	$(BIN)/python bench/fine_tune.py --steps 200
	$(BIN)/python bench/fine_tune.py --steps 600
	$(BIN)/python bench/report.py

test: setup
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q --durations=15

# The fuzz suite's long run (3,000 examples a property, a few minutes); make test runs it bounded (40 each).
fuzz: setup
	FLASHLM_FUZZ=long $(BIN)/python -m pytest -q tests/test_fuzz.py -p no:cacheprovider

# The web example: the bundled model (or MODEL=EXPORT_DIR) in a page on http://127.0.0.1:8000/, run in the browser
MODEL ?=
web: setup
	$(BIN)/python examples/web/serve.py $(if $(MODEL),--model $(MODEL))

bench: setup
	$(BIN)/python bench/train_speed.py --data data/tinystories
	$(BIN)/python bench/train_busy.py --data data/tinystories
	$(BIN)/python bench/runtime_speed.py --model exports/demo
	$(BIN)/python bench/runtime_busy.py --model exports/demo

lint: setup
	$(BIN)/ruff check core flashlm export runtime tests bench examples

clean:
	rm -rf runs exports data/tinystories .pytest_cache
