# cryptboot: the README's commands.
PREFIX ?= /usr
DESTDIR ?=

.PHONY: demo test bench lint install

demo:
	tools/demo.sh

test:
	tools/test.sh

bench:
	tools/setup.sh
	.venv/bin/python -m bench

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy

install:
	tools/install.sh "$(DESTDIR)" "$(PREFIX)"
