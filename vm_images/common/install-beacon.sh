#!/bin/sh
# Install beacon-golem (shim + node launcher) into a node image: the one install step every
# Dockerfile in vm_images/ runs, from the sources they copied to /opt/beacon/src.
#
#   install-beacon.sh VENV [PIP_ARGS...]   into a new virtual environment at VENV
#   install-beacon.sh --system [PIP_ARGS...]   into the image's python3 (vLLM's image: the node
#                                              launches vLLM with its own Python, so both share it)
# PIP_ARGS are extra requirements (the llama.cpp image adds gguf and numpy for the tiny model).
set -eu
SRC=/opt/beacon/src
[ "$#" -ge 1 ] || { echo "usage: install-beacon.sh VENV|--system [PIP_ARGS...]" >&2; exit 2; }
target="$1"
shift
cd "$SRC"
test -f README.md || echo "# beacon-golem" > README.md
if [ "$target" = "--system" ]; then
    python=python3
else
    python3 -m venv "$target"
    python="$target/bin/python"
fi
"$python" -m pip install --no-cache-dir . "$@"
"$python" -c "import beacon_golem; print('beacon-golem', beacon_golem.__version__)"
cd /
rm -rf "$SRC"
