#!/usr/bin/env bash
# Installs the Debian packages whose programs the tests start, where they are missing; `make test` runs it
# first (and so does CI, through .ci/run). When all are there it does nothing, not even `apt-get update`.
# As root it calls apt-get directly (CI); otherwise through sudo.
set -euo pipefail

missing=()
# Spark (the feature job's second engine) needs a Java runtime.
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
# The online store's tests run against a real Redis server (they fail, not skip, without one).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The MLflow registry's integration test runs `mlflow server` on a throwaway PostgreSQL cluster.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The journey map's browser test opens the page in headless Chromium (it fails, not skips, without one).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# BG/NBD (pymc-marketing) compiles PyTensor's graphs with a C++ compiler; without one a fit takes minutes.
command -v g++ >/dev/null 2>&1 || missing+=(g++)

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "system-deps: the tests need the Debian packages ${missing[*]}; install them as root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install the equivalents of ${missing[*]} by hand" >&2
  exit 1
fi

echo "system-deps: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
