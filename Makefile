# One virtual environment at .venv/; every target sets up what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
# Debian packages the tests and the demo need (headless Chromium, speech tools, network lab,
# Redis for the cluster tests, GStreamer's webrtcbin as a stock WHIP/WHEP peer, Janus to compare).
DEBIAN_PACKAGES := chromium espeak-ng sox nftables iproute2 redis-server \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-nice python3-gi gir1.2-gstreamer-1.0 \
	gir1.2-gst-plugins-bad-1.0 janus

.PHONY: setup system-packages run test test-fast fuzz lint bench-quick clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

system-packages: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): Makefile | $(PY)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	touch $(SYSTEM_STAMP)

# One SFU node with the demo shop and pages, plus an agent worker (agent and captions jobs).
run: setup system-packages
	@$(PY) -m agent worker --config configs/demo.toml --kinds agent,captions & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT; \
	$(PY) -m sfu serve --config configs/demo.toml

test: setup system-packages
	$(PY) -m ruff check sfu agent tests benchmarks examples
	$(PY) -m ruff format --check sfu agent tests benchmarks examples
	$(PY) -m pytest -q -rfEs

test-fast: setup
	$(PY) -m pytest -q -m "not browser and not netns and not slow"

# The parsers' fuzz tests with the long budget (fresh random inputs, ~3 minutes); `make test`
# runs the same tests with the short, derandomized one.
fuzz: setup
	$(PY) -m pytest -q -m fuzz tests/fuzz

lint: setup
	$(PY) -m ruff check sfu agent tests benchmarks examples
	$(PY) -m ruff format --check sfu agent tests benchmarks examples

bench-quick: setup system-packages
	$(PY) benchmarks/fanout.py --quick --json build/fanout.json

clean:
	rm -rf $(VENV) build .pytest_cache
