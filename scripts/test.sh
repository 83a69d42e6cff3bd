#!/usr/bin/env bash
# Set up .venv, install the project with its dev extras (all three backends), run the whole
# test suite on TensorFlow. Extra arguments go to pytest, e.g. ./scripts/test.sh -k deconvnet -x
# ./scripts/test.sh --backends [pytest args]: the other backends. First the tests that start
# JAX and PyTorch processes of their own (marked `cross_backend`: the same numbers, the
# distributed runs, no TensorFlow imported, the Graphs dashboard), then the backend-neutral
# tests (marked `backends`) on JAX and on PyTorch (KERAS_BACKEND=jax, torch). .ci/run runs
# both commands.
# ./scripts/test.sh --numerics [pytest args]: the tests marked `numerics` (they compare
# float results of different computations) three times, as other CPUs would run them:
# TensorFlow's defaults, without oneDNN's kernels (TF_ENABLE_ONEDNN_OPTS=0), and with one
# intra-op thread (TF_NUM_INTRAOP_THREADS=1, so other reduction orders).
. "$(dirname "$0")/_venv.sh" dev
# The browser tests drive Debian's chromium; install it when we can (root + apt), otherwise
# those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing Debian's chromium for the browser tests"
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "    could not install chromium; browser tests will be skipped"
fi
# JAX compiles every jitted function with XLA, and many tests (and the processes they
# start) compile the same ones for the same small models: a compilation cache for this run
# (removed at its end) saves about a seventh of the JAX tests' time.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t tbviz-jax-cache.XXXXXX)"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
# pytest-xdist: one worker per core (at most 4), each test file whole in one worker, so a
# module's fixtures are made once. A test of a tiny model keeps about one core busy, so on
# two cores two workers take about 0.6 of the serial time. `-n 0` among the arguments runs
# serially (for --pdb, say); TBVIZ_TEST_WORKERS=N sets the number of workers.
PAR=(-n "${TBVIZ_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile)
if [ "${1:-}" = "--backends" ]; then
  shift
  failed=""
  echo "==> tests that run JAX and PyTorch in processes of their own"
  .venv/bin/python -m pytest "${PAR[@]}" -m "cross_backend and not zoo" "$@" || failed="$failed cross-backend"
  for b in jax torch; do
    echo "==> backend-neutral tests on $b"
    # PyTorch's OpenMP threads spin while they wait: two workers of two threads each on two
    # cores took 1.6x the serial time, two of one thread each 0.7x.
    threads=""; [ "$b" = torch ] && threads="OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"
    env KERAS_BACKEND=$b $threads .venv/bin/python -m pytest "${PAR[@]}" -m "backends and not zoo" "$@" || failed="$failed $b"
  done
  if [ -n "$failed" ]; then
    echo "==> backend-neutral tests failed on:$failed"
    exit 1
  fi
  exit 0
fi
if [ "${1:-}" = "--numerics" ]; then
  shift
  failed=""
  for setting in "" TF_ENABLE_ONEDNN_OPTS=0 TF_NUM_INTRAOP_THREADS=1; do
    echo "==> numerics tests with ${setting:-the defaults}"
    env -u TF_ENABLE_ONEDNN_OPTS -u TF_NUM_INTRAOP_THREADS $setting \
      .venv/bin/python -m pytest "${PAR[@]}" -m numerics "$@" || failed="$failed ${setting:-defaults}"
  done
  if [ -n "$failed" ]; then
    echo "==> numerics tests failed with:$failed"
    exit 1
  fi
  echo "==> numerics tests passed with all three settings"
  exit 0
fi
# The default run: everything on TensorFlow but the other backends' processes (--backends).
.venv/bin/python -m pytest "${PAR[@]}" -m "not zoo and not cross_backend" "$@"
