# The two commands: `make run` (the default experiment end to end) and `make test`.
# Both install what is missing first, and nothing more on a second call.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= default
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data run test test-fast lint bench

setup: $(STAMP) data

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv support missing; installing python3-venv" >&2; \
	  $(call apt_install,python3-venv) && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }

# Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The embedded dataset: Debian's dataset-fashion-mnist where apt-get can install it; elsewhere
# aqgan-ray falls back to torchvision's download into its cache directory.
data:
	@if [ ! -d $(FASHION_MNIST_DIR) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(call apt_install,dataset-fashion-mnist) || \
	      echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision on first use" >&2; \
	  else \
	    echo "note: no apt-get here; Fashion-MNIST will be downloaded by torchvision on first use" >&2; \
	  fi; \
	fi

run: setup
	$(BIN)/aqgan-ray run --experiment $(EXPERIMENT)

# Everything: the real trained model, the loopback Ray cluster, the command line end to end.
test: setup
	$(BIN)/python -m pytest -q

# The inner loop: no Ray, no model training (tests/conftest.py sets the markers).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not ray and not slow"

lint: setup
	$(BIN)/ruff check aqgan_ray baselines tests

bench: setup
	$(BIN)/aqgan-ray bench eval --experiment $(EXPERIMENT)

# apt-get install as root, or through sudo without a password prompt; updates the package lists
# only when the package is not found in the current ones.
define apt_install
{ SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
  $$SUDO apt-get install -y -qq $(1) >/dev/null 2>&1 || \
  { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq $(1) >/dev/null; }; }
endef
