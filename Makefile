# make setup   -> .venv with bnwvad (editable), torch, onnx and ONNX Runtime for CPU
# make test    -> the test suite (what CI runs)
# RUNTIME=gpu  -> onnxruntime-gpu instead of onnxruntime (the two must never share an env)
# TORCH=...    -> the torch requirement; TORCH_INDEX=URL picks a wheel index (e.g. CPU builds)
PYTHON ?= python3
VENV ?= .venv
RUNTIME ?= cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
OTHER_ORT := $(if $(filter gpu,$(RUNTIME)),onnxruntime,onnxruntime-gpu)

.PHONY: setup test test-slow demo bench clean

setup: $(VENV)/.installed-$(RUNTIME)

$(VENV)/.installed-$(RUNTIME): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip uninstall -y -q $(OTHER_ORT) 2>/dev/null || true
	$(PY) -m pip install -q -e ".[train,export,$(RUNTIME),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
