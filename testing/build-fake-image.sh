#!/usr/bin/env bash
# Builds the static fake-openclaw test binary and the Docker image
# spotkeeper-test/fake-openclaw:1 (FROM scratch, binary as ENTRYPOINT).
#
# Idempotent: cargo skips an unchanged crate, and the image is rebuilt only
# when its label spotkeeper.fake-openclaw.sha256 differs from the binary's sha256.
# Prints the image reference on stdout as its last line; progress goes to stderr.
#
# Env: FAKE_OPENCLAW_IMAGE (default spotkeeper-test/fake-openclaw:1)
#      FORCE=1 to rebuild the image even if the label matches.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${FAKE_OPENCLAW_IMAGE:-spotkeeper-test/fake-openclaw:1}"
label="spotkeeper.fake-openclaw.sha256"

arch="$(uname -m)"
case "$arch" in
  x86_64|aarch64) triple="${arch}-unknown-linux-gnu" ;;
  arm64) triple="aarch64-unknown-linux-gnu" ;;
  *) echo "build-fake-image: unsupported architecture $arch" >&2; exit 1 ;;
esac

manifest="$repo/testing/fake-openclaw/Cargo.toml"
target_dir="$repo/target/fake-openclaw"
locked=()
[[ -f "$repo/testing/fake-openclaw/Cargo.lock" ]] && locked=(--locked)

# crt-static on the gnu target gives a static-pie binary that runs FROM scratch.
# With an explicit --target, RUSTFLAGS does not reach build scripts, so they stay dynamic (as they must).
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet "${locked[@]}" \
  --target "$triple" --manifest-path "$manifest" --target-dir "$target_dir" >&2

bin="$target_dir/$triple/release/fake-openclaw"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build-fake-image: $bin is dynamically linked; it would not run FROM scratch" >&2
  exit 1
fi
sum="$(sha256sum "$bin" | cut -d' ' -f1)"

current="$(docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$image" 2>/dev/null || true)"
if [[ "$current" == "$sum" && "${FORCE:-0}" != 1 ]]; then
  echo "build-fake-image: $image is up to date (sha256 $sum)" >&2
  echo "$image"
  exit 0
fi

old_id="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/fake-openclaw"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY fake-openclaw /fake-openclaw
EXPOSE 18789
LABEL $label="$sum"
ENTRYPOINT ["/fake-openclaw"]
DOCKERFILE

# The engine is 20.10 and the client has no buildx plugin: use the classic builder
# explicitly (it prints a deprecation notice, harmless), so a DOCKER_BUILDKIT=1 in
# the caller's environment cannot break the build.
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$image" "$ctx" 2>&1)"; then
  echo "$out" >&2
  echo "build-fake-image: docker build failed" >&2
  exit 1
fi
new_id="$(docker image inspect -f '{{.Id}}' "$image")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
  # Drop the previous build so rebuilds leave no dangling images (kept if a container still uses it).
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "build-fake-image: built $image (sha256 $sum)" >&2
echo "$image"
