#!/usr/bin/env bash
# Serve TensorBoard for outputs/ on 127.0.0.1 only: it has no authentication, so never bind
# 0.0.0.0 or tunnel it publicly. From a laptop: ssh -L 6006:127.0.0.1:6006 user@server
set -euo pipefail
LOGDIR="${LOGDIR:-${1:-outputs}}"
PORT="${PORT:-6006}"
HOST="${HOST:-127.0.0.1}"
TENSORBOARD="${TENSORBOARD:-tensorboard}"
echo "TensorBoard for ${LOGDIR}: http://${HOST}:${PORT}/  (Ctrl-C to stop)"
echo "remote machine? on your laptop: ssh -N -L ${PORT}:127.0.0.1:${PORT} <user>@<this-host>, then open http://127.0.0.1:${PORT}/"
exec "${TENSORBOARD}" --logdir "${LOGDIR}" --host "${HOST}" --port "${PORT}"
