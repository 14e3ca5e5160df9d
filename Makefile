# Everything a fresh machine needs is installed by these targets from this
# repository's own files: only python3 (with venv), make and git are assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick bench-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	$(BIN)/python -m compileall -q filexfer
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" ./scripts/demo.sh

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check filexfer tests bench
	$(BIN)/ruff format --check filexfer tests bench
	$(BIN)/mypy --strict filexfer

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

# The baselines `make bench` compares against: sshd (for scp and rsync),
# rsync and socat, installed with apt-get only when missing.  Started as
# root, sshd also needs its privilege separation directory /run/sshd,
# which only the system's sshd service would otherwise create.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

bench-tools:
	@missing=""; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends $$missing; \
	else \
		echo "openssh-server, rsync and socat are installed"; \
	fi
	@if [ "$$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then \
		install -d -m 0755 /run/sshd && echo "created /run/sshd"; \
	fi

clean:
	rm -rf $(VENV) demo build *.egg-info
