#!/usr/bin/env bash
# Set up .venv, install the project with its dev extras, run the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k deconvnet -x
. "$(dirname "$0")/_venv.sh" dev
# The browser tests drive Debian's chromium; install it when we can (root + apt), otherwise
# those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing Debian's chromium for the browser tests"
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "    could not install chromium; browser tests will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
