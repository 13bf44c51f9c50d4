# `make test` and `make demo` bootstrap everything they need into .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint install mosquitto clean

install: $(STAMP)

# constraints.txt pins every package to the versions the suite was tested with.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[all]'
	@touch $(STAMP)

# The broker the tests run against. Installed with apt when missing and we are root;
# otherwise say how to install it.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing mosquitto with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else \
	  echo "mosquitto is not installed and this is not root: install it (apt-get install mosquitto) for the broker tests"; \
	fi

test: $(STAMP) mosquitto
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/hybreid demo

lint: $(STAMP)
	$(BIN)/ruff check hybreid tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
