#!/bin/sh
# Starts Alertmanager with the webhook URLs taken from the environment (see alertmanager.yml).
# Usage: entrypoint.sh CONFIG RENDERED_CONFIG ALERTMANAGER_BINARY [FLAG...]
set -eu

# check_url NAME VALUE: a URL Alertmanager can post to, and that stays one string between YAML's quotes.
check_url() {
  case "$2" in
    http://* | https://*) ;;
    *) echo "$1 must start with http:// or https://" >&2; exit 2 ;;
  esac
  case "$2" in
    *[\"\\\ ]*) echo "$1 must not contain quotes, backslashes or spaces" >&2; exit 2 ;;
  esac
}

: "${ALERTMANAGER_WEBHOOK_URL:?must be set to the URL that receives alert notifications}"
check_url ALERTMANAGER_WEBHOOK_URL "$ALERTMANAGER_WEBHOOK_URL"
# The retrain receiver's URL is optional: unset, its placeholder stays, and posts nowhere.
if [ -n "${RETRAIN_DISPATCH_URL:-}" ]; then
  check_url RETRAIN_DISPATCH_URL "$RETRAIN_DISPATCH_URL"
else
  echo "RETRAIN_DISPATCH_URL is unset: the retrain receiver posts nowhere" >&2
fi

config=$1
rendered=$2
shift 2
placeholder="http://alertmanager-webhook-url.invalid/"
retrain_placeholder="http://retrain-dispatch-url.invalid/"

grep -qF "$placeholder" "$config" || { echo "$config has no webhook placeholder" >&2; exit 2; }
# Literal replacements: sed would read `&` and `/` in a URL as syntax.
awk -v placeholder="$placeholder" -v retrain_placeholder="$retrain_placeholder" '
function replace(text, from, to,    out, at) {
  out = ""
  while ((at = index(text, from)) > 0) {
    out = out substr(text, 1, at - 1) to
    text = substr(text, at + length(from))
  }
  return out text
}
{
  line = replace($0, placeholder, ENVIRON["ALERTMANAGER_WEBHOOK_URL"])
  if (ENVIRON["RETRAIN_DISPATCH_URL"] != "") line = replace(line, retrain_placeholder, ENVIRON["RETRAIN_DISPATCH_URL"])
  print line
}' "$config" >"$rendered"

exec "$@" --config.file="$rendered"
