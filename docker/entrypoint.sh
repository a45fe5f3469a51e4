#!/bin/sh
# The images' entry point. The first word picks what runs; the rest are that command's options.
#
#   service [...]       textft service on 0.0.0.0:$TEXTFT_PORT (data in $TEXTFT_DATA_DIR, i.e. /data)
#   keys create|list|revoke|webhook-secret [...]   textft service keys ... (docker compose run --rm service keys create --name alice)
#   backup --to FILE | restore --from FILE   textft service backup|restore of $TEXTFT_DATA_DIR
#   worker [...]        textft worker (the service's queue: --broker or $TEXTFT_BROKER)
#   serve --model DIR   textft serve on 0.0.0.0:$TEXTFT_PORT
#   train [...]         textft train through accelerate launch (every visible GPU)
#   --config ... | key=value ...   train, as before: docker run IMAGE --config imdb output.dir=/data/runs/imdb
#   textft ... | configs ... | predict ... | evaluate ...   any other textft command
#   anything else       run as is (e.g. bash)
set -eu

role=${1:-train}
if [ $# -gt 0 ]; then shift; fi
case "$role" in
    -*|*=*) set -- "$role" "$@"; role=train ;;
esac
# The health check asks this file what the container runs: only servers are probed.
echo "$role" > "${TEXTFT_ROLE_FILE:-/tmp/textft-role}" 2>/dev/null || true

port=${TEXTFT_PORT:-8080}
case "$role" in
    service) exec textft service --host 0.0.0.0 --port "$port" "$@" ;;
    keys) exec textft service keys "$@" ;;
    backup|restore) exec textft service "$role" "$@" ;;
    worker) exec textft worker "$@" ;;
    serve) exec textft serve --host 0.0.0.0 --port "$port" "$@" ;;
    train) exec accelerate launch -m textft.train "$@" ;;
    textft) exec textft "$@" ;;
    configs|predict|evaluate|calibrate|report|compare|sweep|push) exec textft "$role" "$@" ;;
    *) exec "$role" "$@" ;;
esac
