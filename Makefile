# pydockerd: `make run` starts the daemon, `make test` runs lint and every test.
# Both install what is missing first (Debian packages, the virtualenv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := containerd runc busybox-static etcd-server docker-registry iproute2 util-linux procps \
	iptables
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test lint bench proto demo-image clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/pydockerd $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy kernel actors api config tests bench

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: install
	@command -v dockerd >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; }
	$(BIN)/python -m bench

proto: install
	bash scripts/gen_proto.sh

demo-image: install
	$(BIN)/python -m tests.fixtures.busybox busybox.tar
	docker -H $${DOCKER_HOST:-unix:///var/run/pydockerd.sock} load -i busybox.tar

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
