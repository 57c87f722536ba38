# Everything a person or CI runs. CI calls `make test` through .ci/run.
CARGO ?= cargo
DESTDIR ?=
PREFIX ?= /usr/local

.PHONY: build test lint fmt release demo bench install clean

build:
	$(CARGO) build --locked

test:
	$(CARGO) test --locked --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

release:
	$(CARGO) build --locked --release

demo:
	$(CARGO) build --locked --release --bin spotkeeper --example demo-s3
	./demo/run.sh

bench:
	./bench/run.sh

install: release
	install -D -m 0755 target/release/spotkeeper $(DESTDIR)$(PREFIX)/bin/spotkeeper

clean:
	$(CARGO) clean
