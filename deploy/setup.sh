#!/usr/bin/env bash
# Set up streamrec on a fresh machine, then run one of its jobs.
#
#   bash deploy/setup.sh demo [ARGS...]   # the main job: local Kafka + local Ray, end to end
#   bash deploy/setup.sh test [ARGS...]   # unit + integration tests (real broker, real Ray)
#   bash deploy/setup.sh shell            # only install; prints how to activate the venv
#
# Installs into a virtual environment outside the repository
# (STREAMREC_VENV, default ~/.cache/streamrec/venv) so that a second run on the
# same machine reuses torch and the other large wheels, and fetches the Kafka
# broker jars once into ~/.cache/streamrec (STREAMREC_BROKER__CACHE_DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/streamrec/venv}"
PYTHON="${PYTHON:-python3}"
JOB="${1:-shell}"
shift || true

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

"$PYTHON" - <<'PY' || { echo "streamrec needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# Java 17+ runs the local broker; Maven fetches its jars once. Install them if missing and we can.
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ] && [ -z "${KAFKA_HOME:-}" ] && [ -z "${STREAMREC_BOOTSTRAP_SERVERS:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need[*]} (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]}. Install Java 17+ and Maven (Debian/Ubuntu: sudo apt-get install ${need[*]})," >&2
    echo "or set KAFKA_HOME to an Apache Kafka distribution, or STREAMREC_BOOTSTRAP_SERVERS to a cluster." >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
say "installing streamrec and its dependencies into $VENV (torch is large: the first run takes a while)"
"$VENV/bin/pip" install -q --progress-bar off -e "$ROOT[test]"

cd "$ROOT"
case "$JOB" in
  demo)
    exec "$VENV/bin/streamrec" demo "$@" ;;
  test)
    "$VENV/bin/streamrec" kafka fetch
    exec "$VENV/bin/python" -m pytest -m "integration or not integration" -q "$@" ;;
  shell)
    say "done. Activate with: source $VENV/bin/activate" ;;
  *)
    echo "unknown job '$JOB' (demo | test | shell)" >&2; exit 2 ;;
esac
