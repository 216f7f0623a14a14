#!/usr/bin/env bash
# Start a beacon node (inference runtime + shim on port 8080) inside a Golem VM, or anywhere.
#
# Golem does not run an image's ENTRYPOINT/CMD: the requestor runs this script itself, e.g.
#   /bin/sh -c "/opt/beacon/start-node.sh > /dev/null 2>&1 &"
# then polls http://<node>:8080/health. Everything it prints also goes to
# $BEACON_DATA_DIR/logs/start-node.log on the data volume (the runtime's own output goes to
# $BEACON_DATA_DIR/logs/runtime.log).
#
# Environment (defaults in brackets; each image sets BEACON_RUNTIME and, when built with a
# model, BEACON_BAKED_MODEL):
#   BEACON_RUNTIME        ollama | dmr | vllm | llamacpp (required)
#   BEACON_IMAGE_RUNTIMES the runtimes an image with several holds ("llamacpp ollama dmr" in the
#                         multi image); BEACON_RUNTIME must be one of them [unset: not checked]
#   BEACON_MODEL          model to serve [$BEACON_BAKED_MODEL]; see beacon_golem/node/prepare_model.py
#   BEACON_MODEL_PULL     1: download a missing model now (needs outbound traffic) [0]
#   BEACON_DATA_DIR       node data: jobs, results, logs [/data]
#   BEACON_MODELS_DIR     uploaded and pulled models [/models]
#   BEACON_CACHE_DIR      HOME, caches, temporary files [/cache]
#   BEACON_BAKED_DIR      models baked into the image [/opt/beacon/baked]
#   BEACON_HOST / BEACON_PORT      where the shim listens [0.0.0.0 / 8080]
#   BEACON_PARALLEL       requests the runtime serves at once [4]
#   BEACON_RUNTIME_SETTINGS  the runtime's own settings as JSON ({"ctx_size": 8192, ...}) [none]
#   BEACON_READY_TIMEOUT  seconds to wait for the model to load [900]
#   BEACON_REGION         region label reported in /info [none]
#   BEACON_SHIM_TOKEN     bearer token the shim requires [none]
#   BEACON_PYTHON / BEACON_BIN     the Python and `beacon` to use [python3 / beacon]
#   BEACON_DRY_RUN        1: check the model, print the node command, start nothing [0]
#
# Exit codes: 2 bad configuration, 3 model missing (refused before starting anything),
# 4 model pull or import failed; otherwise `beacon node up`'s own.
set -euo pipefail

RUNTIME="${BEACON_RUNTIME:-}"
DATA_DIR="${BEACON_DATA_DIR:-/data}"
MODELS_DIR="${BEACON_MODELS_DIR:-/models}"
CACHE_DIR="${BEACON_CACHE_DIR:-/cache}"
BAKED_DIR="${BEACON_BAKED_DIR:-/opt/beacon/baked}"
HOST="${BEACON_HOST:-0.0.0.0}"
PORT="${BEACON_PORT:-8080}"
PARALLEL="${BEACON_PARALLEL:-4}"
READY_TIMEOUT="${BEACON_READY_TIMEOUT:-900}"
PY="${BEACON_PYTHON:-python3}"
BEACON="${BEACON_BIN:-beacon}"

die() {
    local code="$1"
    shift
    echo "start-node: $*" >&2
    exit "$code"
}

# The log lives on the data volume: set it up before anything else can fail.
LOG_DIR="$DATA_DIR/logs"
mkdir -p "$LOG_DIR" 2>/dev/null || die 2 "cannot create $LOG_DIR (is BEACON_DATA_DIR=$DATA_DIR a writable volume?)"
LOG="$LOG_DIR/start-node.log"
# One tee for both streams keeps the log in order (stderr joins stdout).
exec > >(tee -a "$LOG") 2>&1
echo "start-node: $(date -u +%Y-%m-%dT%H:%M:%SZ) runtime=${RUNTIME:-?} model=${BEACON_MODEL:-${BEACON_BAKED_MODEL:-?}} pull=${BEACON_MODEL_PULL:-0}"

case "$RUNTIME" in
    ollama | dmr | vllm | llamacpp) ;;
    "") die 2 "BEACON_RUNTIME is not set (ollama, dmr, vllm or llamacpp)" ;;
    *) die 2 "BEACON_RUNTIME=$RUNTIME is not a runtime (ollama, dmr, vllm or llamacpp)" ;;
esac
if [ -n "${BEACON_IMAGE_RUNTIMES:-}" ]; then
    case " $BEACON_IMAGE_RUNTIMES " in
        *" $RUNTIME "*) ;;
        *) die 2 "BEACON_RUNTIME=$RUNTIME is not in this image (it holds $BEACON_IMAGE_RUNTIMES)" ;;
    esac
fi
command -v "$PY" >/dev/null 2>&1 || die 2 "no Python at $PY (set BEACON_PYTHON)"
command -v "$BEACON" >/dev/null 2>&1 || die 2 "no beacon command at $BEACON (set BEACON_BIN)"

# Only the volumes are on disk in a Golem VM: keep every cache and temporary file there.
mkdir -p "$MODELS_DIR" "$CACHE_DIR/home" "$CACHE_DIR/tmp" 2>/dev/null || die 2 "cannot create $MODELS_DIR or $CACHE_DIR"
export HOME="$CACHE_DIR/home"
export XDG_CACHE_HOME="$CACHE_DIR"
export TMPDIR="$CACHE_DIR/tmp"
export MODEL_RUNNER_LOG_DIR="$LOG_DIR/model-runner"
export BEACON_LOG_LEVEL="${BEACON_LOG_LEVEL:-info}"

# Find the model (uploaded, baked or pulled) or refuse before starting anything.
status=0
prepared="$("$PY" -m beacon_golem.node.prepare_model --shell \
    --runtime "$RUNTIME" \
    --model "${BEACON_MODEL:-}" \
    --baked-model "${BEACON_BAKED_MODEL:-}" \
    --models-dir "$MODELS_DIR" \
    --baked-dir "$BAKED_DIR" \
    --cache-dir "$CACHE_DIR" \
    --log "$LOG_DIR/model-prepare.log")" || status=$?
[ "$status" -eq 0 ] || exit "$status"
eval "$prepared"

args=(node up --runtime "$RUNTIME" --host "$HOST" --port "$PORT" --data-dir "$DATA_DIR"
    --parallel "$PARALLEL" --ready-timeout "$READY_TIMEOUT")
if [ -n "${BEACON_RESOLVED_MODEL:-}" ]; then
    args+=(--model "$BEACON_RESOLVED_MODEL")
fi
if [ -n "${BEACON_REGION:-}" ]; then
    args+=(--region "$BEACON_REGION")
fi
if [ -n "${BEACON_RUNTIME_SETTINGS:-}" ]; then
    args+=(--settings "$BEACON_RUNTIME_SETTINGS")
fi

echo "start-node: $BEACON ${args[*]}"
if [ "${BEACON_DRY_RUN:-0}" = "1" ]; then
    exit 0
fi
exec "$BEACON" "${args[@]}"
