#!/usr/bin/env bash
# Build the semlayout images from a clean context (no .venv, outputs or .git sent to the engine).
#
#   bash docker/build.sh                      # production-style: python:3.11-slim base, PyPI
#   BASE_IMAGE=semlayout/base:local WHEELS_FROM_HOST=1 bash docker/build.sh   # offline, local base
#
# Environment: IMAGE_REPO (ghcr.io/semlayout), VERSION (the package version), BASE_IMAGE,
# TARGETS ("train serve"), WHEELS_FROM_HOST=1 (fill the context's wheels/ from this machine's
# pip index and install with --no-index), DOCKER (docker), BUILD_TIMES (file for "target seconds").
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)
PY=${PY:-$REPO_ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DOCKER=${DOCKER:-docker}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/semlayout}
VERSION=${VERSION:-$(PYTHONPATH=src "$PY" -c 'import semlayout; print(semlayout.__version__)')}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
TARGETS=${TARGETS:-train serve}
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)

if ! $DOCKER info >/dev/null 2>&1; then
  echo "error: no Docker engine answers (\`$DOCKER info\` failed); docker/test.sh shows how to start one" >&2
  exit 2
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/semlayout-ctx.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
cp -r pyproject.toml README.md src components pipelines "$CTX"/
mkdir -p "$CTX/docker" "$CTX/wheels"
cp docker/Dockerfile docker/requirements-serve.txt "$CTX/docker/"
find "$CTX" -name __pycache__ -prune -exec rm -rf {} + ; rm -rf "$CTX"/src/*.egg-info

PIP_ARGS=""
TORCH_INDEX_ARG=()
if [ "${WHEELS_FROM_HOST:-0}" = "1" ]; then
  # everything the images install, as wheels from this machine's pip configuration (offline)
  "$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > "$CTX/requirements-train.txt"
  # WHEELHOUSE: a folder kept between builds (pip download skips what is already there)
  WHEELHOUSE=${WHEELHOUSE:-$CTX/wheels}
  mkdir -p "$WHEELHOUSE"
  "$PY" -m pip download --quiet --prefer-binary -d "$WHEELHOUSE" \
    "setuptools>=68" wheel psycopg2-binary -r "$CTX/requirements-train.txt" -r docker/requirements-serve.txt
  [ "$WHEELHOUSE" = "$CTX/wheels" ] || cp -l "$WHEELHOUSE"/* "$CTX/wheels/" 2>/dev/null || cp "$WHEELHOUSE"/* "$CTX/wheels/"
  PIP_ARGS="--no-index"
  TORCH_INDEX_ARG=(--build-arg "TORCH_INDEX=")
  echo "wheels: $(ls "$CTX/wheels" | wc -l) files, $(du -sh "$CTX/wheels" | cut -f1)"
fi

for target in $TARGETS; do
  case $target in
    train) tag="$IMAGE_REPO/semlayout:$VERSION" ;;
    serve) tag="$IMAGE_REPO/semlayout-serve:$VERSION" ;;
    *) echo "error: unknown target '$target' (expected train or serve)" >&2; exit 2 ;;
  esac
  t0=$(date +%s)
  $DOCKER build --network host -f "$CTX/docker/Dockerfile" --target "$target" -t "$tag" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_ARGS=$PIP_ARGS" \
    --build-arg "GIT_COMMIT=$GIT_COMMIT" "${TORCH_INDEX_ARG[@]}" "$CTX"
  secs=$(( $(date +%s) - t0 ))
  size=$($DOCKER image inspect -f '{{.Size}}' "$tag")
  echo "built $tag in ${secs}s, $(( size / 1024 / 1024 )) MiB"
  [ -n "${BUILD_TIMES:-}" ] && echo "$target $tag $secs $size" >> "$BUILD_TIMES"
done
