# trtserve: the README's commands (CONTRACT §1).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPOSITORY ?= model_repository
DEMO_MODELS := cnn minilm
# GPU extras (TensorRT, onnxruntime-gpu, cuda-python) only where nvidia-smi sees a GPU.
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
EXTRAS := $(if $(HAS_GPU),gpu,cpu),convert,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install run demo test lint bench models clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# Convert the demo models; a model whose config and weights are unchanged is skipped.
models: install
	@for m in $(DEMO_MODELS); do \
		HF_HUB_OFFLINE=1 $(PY) -m convert build configs/models/$$m.yaml --repository $(REPOSITORY) --if-changed -q \
			|| exit $$?; \
	done

run: models
	@echo "make run: the demo models are in ./$(REPOSITORY) (convert inspect $(REPOSITORY)/minilm/1 shows one)."
	@echo "make run: serving them over HTTP arrives with issue 3 (runtime.app on Ray Serve); nothing is served yet." >&2
	@exit 1

demo: models
	@echo "make demo: the KServe v2 client demo needs the server of issue 3; not available yet." >&2
	@exit 1

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: install
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks convert configs/models/minilm.yaml configs/models/cnn.yaml --results benchmarks/results
	$(PY) -m benchmarks report --results benchmarks/results --output benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) $(REPOSITORY) benchmarks/results .pytest_cache .ruff_cache
