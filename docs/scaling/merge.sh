#!/bin/sh
# Merges every shard in OUT into OUT/merged (report.json byte for byte the one an unsharded
# run writes). With WAIT=1 it waits while a shard is still running (merge's exit 75) instead of
# failing; any other refusal (a missing, unfinished or mismatched shard) ends it with exit 1.
set -eu
: "${LAYERSTREAM:=layerstream}" "${OUT:=layerstream-out}" "${WAIT:=0}"
while :; do
  status=0
  "$LAYERSTREAM" merge "$OUT"/shard-* --out "$OUT/merged" || status=$?
  if [ "$status" -ne 75 ] || [ "$WAIT" != 1 ]; then
    exit "$status"
  fi
  sleep 30
done
