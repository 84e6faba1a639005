#!/bin/sh
# Starts Alertmanager with the webhook URL taken from the environment (see alertmanager.yml).
# Usage: entrypoint.sh CONFIG RENDERED_CONFIG ALERTMANAGER_BINARY [FLAG...]
set -eu

: "${ALERTMANAGER_WEBHOOK_URL:?must be set to the URL that receives alert notifications}"
case "$ALERTMANAGER_WEBHOOK_URL" in
  http://* | https://*) ;;
  *) echo "ALERTMANAGER_WEBHOOK_URL must start with http:// or https://" >&2; exit 2 ;;
esac
case "$ALERTMANAGER_WEBHOOK_URL" in
  *[\"\\\ ]*) echo "ALERTMANAGER_WEBHOOK_URL must not contain quotes, backslashes or spaces" >&2; exit 2 ;;
esac

config=$1
rendered=$2
shift 2
placeholder="http://alertmanager-webhook-url.invalid/"

grep -qF "$placeholder" "$config" || { echo "$config has no webhook placeholder" >&2; exit 2; }
# A literal replacement: sed would read `&` and `/` in the URL as syntax.
awk -v placeholder="$placeholder" '{
  rest = $0; out = ""
  while ((at = index(rest, placeholder)) > 0) {
    out = out substr(rest, 1, at - 1) ENVIRON["ALERTMANAGER_WEBHOOK_URL"]
    rest = substr(rest, at + length(placeholder))
  }
  print out rest
}' "$config" >"$rendered"

exec "$@" --config.file="$rendered"
