#!/usr/bin/env bash
# Builds Tuneguard's container images without a daemon (buildah) and without a registry: the base is
# made from Debian packages (mmdebstrap), the images from the repository's own Dockerfiles.
#
# Usage: scripts/build-images.sh [--archive] [--push] [image...]
#   images: operator, trainer-cpu (default: both), trainer-cuda (needs a registry with nvidia/cuda),
#           base (Debian bookworm + Python 3.11), pause (the test node's sandbox image)
#   --archive  also export each image to a docker-archive (for `ctr images import`, `docker load`,
#              `skopeo copy docker-archive:FILE docker://REGISTRY/...`)
#   --push     also push each image to its registry (TUNEGUARD_IMAGE_REPO), under its content tag and,
#              when TUNEGUARD_IMAGE_TAG is set, under that tag too (credentials: `buildah login`)
# Prints `name=reference` (and `name.archive=path`) lines on stdout; progress goes to stderr.
#
# Every image is tagged with a key of what decides its content (the Dockerfile, the files it copies,
# the base image, the build arguments): an unchanged tree answers from the cache in about a second, and
# a changed tag means changed content, so `imagePullPolicy: IfNotPresent` never runs a stale image.
# buildah's layer cache (--layers) makes a source change rebuild only the layers after the COPY of the
# sources. State: ${TUNEGUARD_CACHE:-~/.cache/tuneguard}/images/ (buildah storage, docker-archives).
# Serialised by a lock, safe to run concurrently. Needs root (or a rootless buildah setup), buildah and
# mmdebstrap (scripts/ensure-node-packages.sh installs them), and the package index for pip.
#
# Environment: TUNEGUARD_IMAGE_REPO (default localhost/tuneguard): the repository part of the tags;
#   TORCH_INDEX_URL: a torch index for trainer-cpu (e.g. a CPU-only one); PYTHON_IMAGE: use this
#   Python base image (pulled) instead of the mmdebstrap base; PIP_CERT: a CA bundle pip trusts in the
#   build (bind-mounted, never stored in the image).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNEGUARD_CACHE:-$HOME/.cache/tuneguard}
store="$cache/images"
repo=${TUNEGUARD_IMAGE_REPO:-localhost/tuneguard}
archive=0
push=0
wanted=()
for a in "$@"; do
  case "$a" in
    --archive) archive=1 ;;
    --push) push=1 ;;
    operator|trainer-cpu|trainer-cuda|base|pause) wanted+=("$a") ;;
    *) echo "build-images: unknown argument '$a' (options: --archive --push; images: operator trainer-cpu trainer-cuda base pause)" >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(operator trainer-cpu)

# The base: Debian bookworm's Python 3.11 with the venv module, `python`, useradd and CA certificates.
BASE_SUITE=bookworm
BASE_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates

for tool in buildah flock sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-images: $tool is required (scripts/ensure-node-packages.sh)" >&2; exit 1; }
done
mkdir -p "$store/archives"
exec 9>"$store/.lock"
flock 9

B=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver overlay)
# This storage is ours alone (and we hold its lock): working containers are leftovers of builds (a failed
# step, a stage with no instructions), each holding an overlay mount. Remove them before and after.
trap '"${B[@]}" rm --all >/dev/null 2>&1 || true' EXIT
"${B[@]}" rm --all >/dev/null 2>&1 || true
have_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
hash_text() { sha256sum | cut -c1-16; }
# Content of files and directories (relative to the repo), as `sha  path` lines; caches excluded.
hash_tree() {
  (cd "$root" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
     | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
timed() {  # timed <label> <command...>
  local label="$1" start=$SECONDS; shift
  echo ">> building $label" >&2
  "$@" >&2
  echo ">> built $label in $((SECONDS - start)) s" >&2
}
export_archive() {  # export_archive <name> <ref>: docker-archive, one per image name (older ones removed)
  local name="$1" ref="$2" file
  file="$store/archives/$name-${ref##*:}.tar"
  if [ ! -f "$file" ]; then
    local start=$SECONDS
    rm -f "$store/archives/$name-"*.tar "$store/archives/.$name-"*
    "${B[@]}" push --quiet "$ref" "docker-archive:$store/archives/.$name.tmp:$ref" >&2
    mv "$store/archives/.$name.tmp" "$file"
    echo ">> exported $ref to $file in $((SECONDS - start)) s" >&2
  fi
  echo "$name.archive=$file"
}

# Older builds of the same image (and flavor) go, so the store holds one of each. The untagged layer cache
# stays: `rmi --prune` would take the current build's cache too, and the next build would reinstall torch.
prune_older() {  # prune_older <ref>
  local name="${1%:*}" tag="${1##*:}" flavor=""
  case "$tag" in *-*) flavor="${tag%-*}-" ;; esac
  "${B[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^$name:$flavor" | grep -vxF "$1" \
    | xargs -r "${B[@]}" rmi >/dev/null 2>&1 || true
}

publish() {  # publish <name> <ref>: the archive and the push the options ask for
  local name="$1" ref="$2"
  [ $archive = 0 ] || export_archive "$name" "$ref"
  if [ $push = 1 ]; then
    local refs=("$ref")
    if [ -n "${TUNEGUARD_IMAGE_TAG:-}" ]; then
      refs+=("${ref%:*}:$TUNEGUARD_IMAGE_TAG")
      "${B[@]}" tag "$ref" "${refs[1]}" >&2
    fi
    for r in "${refs[@]}"; do "${B[@]}" push --quiet "$r" "docker://$r" >&2; echo ">> pushed $r" >&2; done
  fi
}

base_ref() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then echo "$PYTHON_IMAGE"; return; fi
  local key
  key=$(printf '%s\n' "$BASE_SUITE" "$BASE_MIRROR" "$BASE_PACKAGES" "$(mmdebstrap --version 2>/dev/null)" | hash_text)
  echo "$repo/base:$BASE_SUITE-$key"
}

build_base() {
  local ref="$1" tar ctr
  command -v mmdebstrap >/dev/null || { echo "build-images: mmdebstrap is required" >&2; exit 1; }
  tar=$(mktemp "$store/.base.XXXXXX.tar")
  # A RETURN trap is global: it would fire again when the caller returns, with $tar gone (set -u). Once only.
  trap 'rm -f "${tar:-}"; trap - RETURN' RETURN
  # minbase: Essential packages + apt; no docs, man pages or translations.
  mmdebstrap --variant=minbase --include="$BASE_PACKAGES" --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$BASE_SUITE" "$tar" "$BASE_MIRROR"
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" add "$ctr" "$tar" /
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' --label org.opencontainers.image.title=tuneguard-base \
    --label "org.opencontainers.image.description=Debian $BASE_SUITE minbase + $BASE_PACKAGES (mmdebstrap)" "$ctr"
  "${B[@]}" commit --quiet --rm "$ctr" "$ref"
}

ensure_base() {
  local ref
  ref=$(base_ref)
  if ! have_image "$ref"; then
    if [ -n "${PYTHON_IMAGE:-}" ]; then "${B[@]}" pull --quiet "$ref" >&2
    else timed "base image $ref (mmdebstrap)" build_base "$ref"; fi
  fi
  echo "$ref"
}

# A CA bundle pip must trust (PIP_CERT, e.g. a TLS-intercepting proxy's) reaches the build's RUN steps
# as a read-only bind mount over the image's bundle: it is never written into a layer.
ca_args=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  ca_args=(--volume "$PIP_CERT:/etc/ssl/certs/ca-certificates.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

bud() {  # bud <ref> <dockerfile> [build args...]
  local ref="$1" file="$2"; shift 2
  "${B[@]}" bud --layers --force-rm --isolation chroot --network host --pull-never ${ca_args[@]+"${ca_args[@]}"} \
    -f "$file" -t "$ref" "$@" "$root"
}

build_operator() {
  local base key ref
  base=$(ensure_base)
  key=$( { echo "$base"; hash_tree Dockerfile .dockerignore pyproject.toml constraints.txt tuneguard operator; } | hash_text)
  ref="$repo/operator:$key"
  have_image "$ref" || { timed "$ref" bud "$ref" Dockerfile --build-arg "PYTHON_IMAGE=$base" && prune_older "$ref"; }
  echo "operator=$ref"
  publish operator "$ref"
}

build_trainer() {
  local flavor="$1" base="" key ref args=()
  if [ "$flavor" = cpu ]; then
    base=$(ensure_base)
    args=(--build-arg FLAVOR=cpu --build-arg "CPU_IMAGE=$base" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}")
  else
    args=(--build-arg FLAVOR=cuda)
  fi
  key=$( { echo "$flavor $base ${TORCH_INDEX_URL:-}"; hash_tree trainer_image/Dockerfile .dockerignore pyproject.toml \
            constraints.txt tuneguard trainer_image/tuneguard_trainer; } | hash_text)
  ref="$repo/trainer:$flavor-$key"
  if ! have_image "$ref"; then
    if [ "$flavor" = cuda ]; then
      timed "$ref" "${B[@]}" bud --layers --force-rm --isolation chroot --network host ${ca_args[@]+"${ca_args[@]}"} \
        -f trainer_image/Dockerfile -t "$ref" "${args[@]}" "$root"
    else
      timed "$ref" bud "$ref" trainer_image/Dockerfile "${args[@]}"
    fi
    prune_older "$ref"
  fi
  echo "trainer-$flavor=$ref"
  publish "trainer-$flavor" "$ref"
}

build_pause() {
  local key ref ctr out
  key=$(hash_tree tests/cluster/pause)
  ref="$repo/pause:$key"
  if ! have_image "$ref"; then
    command -v go >/dev/null || { echo "build-images: Go is required for the pause image" >&2; exit 1; }
    out=$(mktemp -d "$store/.pause.XXXXXX")
    (cd "$root/tests/cluster/pause" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -ldflags="-s -w" -o "$out/pause" .) >&2
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" copy "$ctr" "$out/pause" /pause >&2
    "${B[@]}" config --entrypoint '["/pause"]' --label org.opencontainers.image.title=tuneguard-test-pause "$ctr"
    "${B[@]}" commit --quiet --rm "$ctr" "$ref" >&2
    rm -rf "$out"
  fi
  echo "pause=$ref"
  publish pause "$ref"
}

for image in "${wanted[@]}"; do
  case "$image" in
    base) echo "base=$(ensure_base)"; [ $archive = 0 ] || export_archive base "$(base_ref)" ;;
    operator) build_operator ;;
    trainer-cpu) build_trainer cpu ;;
    trainer-cuda) build_trainer cuda ;;
    pause) build_pause ;;
  esac
done
