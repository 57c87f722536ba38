# Everything a person or CI runs. CI calls `make test` through .ci/run.
CARGO ?= cargo
DESTDIR ?=
PREFIX ?= /usr/local

SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
MAN_DIR ?= $(PREFIX)/share/man/man1
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(PREFIX)/share/zsh/site-functions
FISH_COMPLETION_DIR ?= $(PREFIX)/share/fish/vendor_completions.d
BIN := target/release/spotkeeper
# One release build serves `make release`, `make demo` and `make install`: the same targets with
# the same features, so none of them rebuilds what another built (the demo's S3 server is an
# example; building it with the binary unifies their dependencies' features once).
RELEASE_BUILD = $(CARGO) build --locked --release --bin spotkeeper --example demo-s3
INSTANCE_TYPES ?= t4g.small t4g.medium
REGION ?=

.PHONY: build test lint fmt release release-aarch64 demo bench install spot-prices clean

build:
	$(CARGO) build --locked

test:
	$(CARGO) test --locked --all-targets
	SPOTKEEPER_BIN=target/debug/spotkeeper testing/deployment-checks.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

release:
	$(RELEASE_BUILD)

demo: release
	./demo/run.sh

BENCH_SCALES ?= medium,large
BENCH_RUNS ?= 3

# Figures only, never asserted (docs/performance.md): the tools side by side, then the daemon's
# freeze window and footprint 30 s after a tick, then the recovery time (empty machine to READY),
# then issue 22's table of all of them beside restic. `release` builds the binary and the local
# S3 server first, so a fresh clone needs nothing else.
bench: release
	BENCH_NO_BUILD=1 ./bench/run.sh --scales $(BENCH_SCALES) --runs $(BENCH_RUNS)
	python3 bench/daemon.py --scale medium --idle-seconds 30
	python3 bench/follow.py --minutes 30
	python3 bench/recovery.py --scales $(BENCH_SCALES) --runs $(BENCH_RUNS)
	python3 bench/summary.py

# Graviton (t4g) cross build; needs `rustup target add aarch64-unknown-linux-gnu` and
# gcc-aarch64-linux-gnu (docs/deployment.md).
release-aarch64:
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	  $(CARGO) build --locked --release --target aarch64-unknown-linux-gnu

install: release
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/spotkeeper
	install -d $(DESTDIR)$(MAN_DIR) $(DESTDIR)$(BASH_COMPLETION_DIR) $(DESTDIR)$(ZSH_COMPLETION_DIR) $(DESTDIR)$(FISH_COMPLETION_DIR)
	$(BIN) man >$(DESTDIR)$(MAN_DIR)/spotkeeper.1
	for sub in run status snapshot restore list verify prune check-config init key completions man; do \
	  $(BIN) man $$sub >$(DESTDIR)$(MAN_DIR)/spotkeeper-$$sub.1 || exit 1; done
	$(BIN) completions bash >$(DESTDIR)$(BASH_COMPLETION_DIR)/spotkeeper
	$(BIN) completions zsh >$(DESTDIR)$(ZSH_COMPLETION_DIR)/_spotkeeper
	$(BIN) completions fish >$(DESTDIR)$(FISH_COMPLETION_DIR)/spotkeeper.fish
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's#/usr/local/bin/spotkeeper#$(PREFIX)/bin/spotkeeper#g' systemd/spotkeeper.service >$(DESTDIR)$(SYSTEMD_UNIT_DIR)/spotkeeper.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/spotkeeper.service
	install -D -m 0644 docs/spotkeeper.example.toml $(DESTDIR)/etc/spotkeeper/spotkeeper.toml.example

spot-prices:
	@test -n "$(REGION)" || { echo 'usage: make spot-prices INSTANCE_TYPES="t4g.small t4g.medium" REGION=eu-west-1' >&2; exit 2; }
	aws ec2 describe-spot-price-history --region $(REGION) --instance-types $(INSTANCE_TYPES) \
	  --product-descriptions Linux/UNIX --start-time "$$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
	  --query 'sort_by(SpotPriceHistory, &to_number(SpotPrice))[].[AvailabilityZone, InstanceType, SpotPrice]' \
	  --output table

clean:
	$(CARGO) clean
