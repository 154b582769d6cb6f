# trtserve: the commands of the README and docs/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPOSITORY ?= model_repository
DEMO_MODELS := cnn minilm
# GPU extras (TensorRT, onnxruntime-gpu, cuda-python) only where nvidia-smi sees a GPU.
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
EXTRAS := $(if $(HAS_GPU),gpu,cpu),serve,batch,convert,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install run demo test test-slow lint bench bench-gpu gpu-check models clean

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

# Serve the demo models at http://127.0.0.1:8000 in the foreground (Ctrl-C stops everything it started).
# TRTSERVE_INGRESS=proxy switches from Ray's HAProxy ingress to its Python proxy.
run: models
	HF_HUB_OFFLINE=1 $(VENV)/bin/trtserve serve configs/serve/demo.yaml

# Start the server, query it with tritonclient, print outputs and latencies, stop it.
demo: models
	HF_HUB_OFFLINE=1 $(VENV)/bin/trtserve demo configs/serve/demo.yaml

# ruff, and the import contracts of pyproject.toml's [tool.importlinter] (the layers).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Everything but the `slow` end-to-end scenarios (a few minutes).
test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" --durations=15

# The `slow` end-to-end scenarios: benchmark subcommands run end to end, the autoscaling ramp.
test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow --durations=15

bench: models
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks convert configs/models/minilm.yaml configs/models/cnn.yaml --results benchmarks/results
	$(PY) -m benchmarks generator --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks serving --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks validate --model cnn --slo-p99-ms 50 --repository $(REPOSITORY) --results benchmarks/results/cnn
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks validate --model minilm --slo-p99-ms 100 --repository $(REPOSITORY) --results benchmarks/results/minilm
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks compare --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks overhead --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks autoscale --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks rollout --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks monitor --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks batch --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks reliability --repository $(REPOSITORY) --results benchmarks/results
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks soak --minutes 10 --repository $(REPOSITORY) --results benchmarks/results
	$(PY) -m benchmarks report --results benchmarks/results --output benchmarks/RESULTS.md

# Where torch sees a CUDA device: the GPU memory figures (torch backend) into $(GPU_RESULTS); `report` renders
# every benchmarks/measured/*/ directory into RESULTS.md. (`python -m benchmarks profile`, `validate` and `pack`,
# here and in `bench`, are `trtserve capacity ...` under the names RESULTS.md quotes.)
GPU_RESULTS ?= benchmarks/measured/gpu
bench-gpu: models
	$(PY) -m benchmarks profile $(REPOSITORY)/cnn/1 --backend torch --results $(GPU_RESULTS)
	$(PY) -m benchmarks pack --model cnn --backend torch --max-replicas 8 --duration 10 --pressure \
		--repository $(REPOSITORY) --results $(GPU_RESULTS)
	$(PY) -m benchmarks report --results benchmarks/results --output benchmarks/RESULTS.md

# The TensorRT and CUDA path, step by step, on a machine with an NVIDIA GPU (docs/guide/gpus.md). Without one
# every step prints `SKIP <step>: <reason>`, nothing is written, and it exits 0.
gpu-check: install
	$(VENV)/bin/trtserve gpu-check --results benchmarks/measured

clean:
	rm -rf $(VENV) $(REPOSITORY) benchmarks/results .pytest_cache .ruff_cache
