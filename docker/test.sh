#!/usr/bin/env bash
# `make docker-test`: build the images with a local Docker engine and run a real pipeline step
# (ingest -> align/QC on a few pairs) inside the training image; its output must equal the
# SubprocessRunner's byte for byte. Reports image sizes and build times.
#
# No engine running? As root with Debian's dockerd installed, one is started the safe way
# (no iptables, no bridge; data under $SEMLAYOUT_DOCKER_DIR) and stopped by its PID at the end.
# No registry is pulled from: the base image is a debootstrap'd Debian bookworm (python3),
# imported as semlayout/base:local; wheels (CPU torch included) come from this machine's pip index.
# Exit 0 passed, 1 failed, 77 skipped (no engine can be started).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)
PY=${PY:-$REPO_ROOT/.venv/bin/python}
WORK=${SEMLAYOUT_DOCKER_DIR:-/tmp/semlayout-docker}
OUT=${OUT:-$REPO_ROOT/outputs/docker}
mkdir -p "$WORK" "$OUT"
DOCKERD_PID=""

cleanup() {
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    # dockerd leaves its default network namespace bind-mounted
    umount "$WORK/exec/netns/default" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != "0" ] || ! command -v dockerd >/dev/null; then
    echo "SKIP: no Docker engine and none can be started (needs root and dockerd: apt-get install docker.io)"
    exit 77
  fi
  export DOCKER_HOST="unix://$WORK/docker.sock"
  dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" -H "$DOCKER_HOST" --pidfile "$WORK/docker.pid" \
    --iptables=false --ip6tables=false --bridge=none > "$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "SKIP: dockerd did not start (see $WORK/dockerd.log)"; exit 77; }
  echo "started dockerd (pid $DOCKERD_PID, $(docker info -f '{{.Driver}}') storage)"
fi

BASE_IMAGE=semlayout/base:local
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  t0=$(date +%s)
  if [ ! -s "$WORK/base.tar" ]; then
    command -v debootstrap >/dev/null || { echo "SKIP: debootstrap missing (apt-get install debootstrap)"; exit 77; }
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$WORK/rootfs" http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1
    tar -C "$WORK/rootfs" -cf "$WORK/base.tar" .
    rm -rf "$WORK/rootfs"
  fi
  docker import "$WORK/base.tar" "$BASE_IMAGE" >/dev/null
  echo "base image $BASE_IMAGE in $(( $(date +%s) - t0 ))s"
fi

TIMES="$OUT/build_times.txt"
: > "$TIMES"
BASE_IMAGE=$BASE_IMAGE WHEELS_FROM_HOST=1 WHEELHOUSE="$WORK/wheels" BUILD_TIMES="$TIMES" bash docker/build.sh

VERSION=$(PYTHONPATH=src "$PY" -c 'import semlayout; print(semlayout.__version__)')
TRAIN_IMAGE=ghcr.io/semlayout/semlayout:$VERSION
SERVE_IMAGE=ghcr.io/semlayout/semlayout-serve:$VERSION

# the serving image starts and answers its CLI
docker run --rm --network host "$SERVE_IMAGE" --help >/dev/null
# a real component inside the training image == the same component in a subprocess
rm -rf "$OUT/check"
SEMLAYOUT_IMAGE=$TRAIN_IMAGE "$PY" docker/check_component.py --out "$OUT/check" | tail -1 > "$OUT/check.json"
cat "$OUT/check.json"

"$PY" - "$TIMES" "$OUT/check.json" "$OUT/report.json" <<'PYEOF'
import json, sys
times, check, dest = sys.argv[1:4]
images = {}
for line in open(times):
    target, tag, secs, size = line.split()
    images[target] = {"tag": tag, "build_seconds": int(secs), "size_mib": round(int(size) / 2**20)}
report = {"images": images, "component_check": json.load(open(check))}
json.dump(report, open(dest, "w"), indent=2)
print(f"{'image':<44} {'build s':>8} {'size MiB':>9}")
for v in images.values():
    print(f"{v['tag']:<44} {v['build_seconds']:>8} {v['size_mib']:>9}")
c = report["component_check"]
print(f"align/QC in the image == subprocess: {c['identical']} ({c['files']} files; "
      f"subprocess {c['seconds']['subprocess']} s, docker {c['seconds']['docker']} s)")
sys.exit(0 if c["identical"] else 1)
PYEOF
