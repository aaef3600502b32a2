#!/bin/sh
# Entrypoint of the training image: run the command as the owner of the mounted model store.
#
# The store is a bind mount of the host's ./model_store, so the versions written into it must belong to
# whoever owns that directory on the host (not to root, not to an arbitrary image user). Started as root
# (the default), this drops to the uid:gid that owns $ALEXNET_MODEL_STORE (default /models), with no
# supplementary groups and no capabilities, and runs the command; started as another user
# (`docker run --user`, compose `user:`), it runs the command as that user unchanged.
set -eu
store=${ALEXNET_MODEL_STORE:-/models}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$store"
  owner=$(stat -c %u "$store")
  group=$(stat -c %g "$store")
  if [ "$owner" = 0 ]; then
    echo "alexnet-train: $store is owned by root on the host; running as root" >&2
  else
    exec setpriv --reuid="$owner" --regid="$group" --clear-groups --inh-caps=-all --bounding-set=-all \
      --no-new-privs -- "$@"
  fi
fi
exec "$@"
