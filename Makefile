# make setup   -> .venv with bnwvad (editable), torch, onnx and ONNX Runtime for CPU
# make test    -> the test suite (what CI runs)
# RUNTIME=gpu  -> onnxruntime-gpu instead of onnxruntime (the two must never share an env),
#                 and the tensorrt extra; torch from PyPI (its Linux wheel is the CUDA build)
# TORCH=...    -> the torch requirement; TORCH_INDEX=URL picks a wheel index (e.g. CPU builds);
#                 TORCH= (empty) installs no torch of its own (e.g. with VENV_ARGS below)
# EXTRAS=...   -> the package extras installed (default train,export,analysis,RUNTIME,dev; + tensorrt for gpu)
# VENV_ARGS=.. -> extra arguments of `python -m venv`, e.g. --system-site-packages to reuse a
#                 machine's own CUDA torch where no registry can be reached
# make gpu-check -> scripts/gpu_check.sh: GPU set-up, gpu tests, TensorRT engines, GPU benchmark
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
RUNTIME ?= cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
comma := ,
EXTRAS ?= train,export,analysis,$(RUNTIME),dev$(if $(filter gpu,$(RUNTIME)),$(comma)tensorrt)
PY := $(VENV)/bin/python
OTHER_ORT := $(if $(filter gpu,$(RUNTIME)),onnxruntime,onnxruntime-gpu)

.PHONY: setup test test-slow demo bench gpu-check clean

setup: $(VENV)/.installed-$(RUNTIME)

$(VENV)/.installed-$(RUNTIME): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(strip $(VENV_ARGS) $(VENV))
	$(PY) -m pip install -q --upgrade pip
	$(if $(strip $(TORCH)),$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)),@echo "TORCH is empty: no torch installed by make")
	$(PY) -m pip uninstall -y -q $(OTHER_ORT) 2>/dev/null || true
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

bench: setup
	$(PY) bench/run.py

gpu-check:
	VENV=$(VENV) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
