#!/bin/sh
# The install steps of deploy/Dockerfile, kept in one place: the image runs them, and
# tests/deploy/test_install.py runs the same lines of the Dockerfile on this script, so the
# two cannot drift.
#
#   install.sh build WHEEL_DIR          (in the sources' root) the wheels of cpa-client and
#                                       cpa-scheduler (the scheduler, the agent, the `cpa` CLI,
#                                       and deploy/'s Envoy template and descriptor set as data)
#   install.sh install WHEEL_DIR VENV   a new virtualenv VENV holding those wheels and their
#                                       dependencies (from the package index pip is set up for)
#
# PYTHON names the interpreter (default python3).
set -eu

python=${PYTHON:-python3}

usage() {
    echo "usage: $0 build WHEEL_DIR | install WHEEL_DIR VENV" >&2
    exit 2
}

case "${1:-}" in
build)
    [ $# -eq 2 ] || usage
    "$python" -m pip wheel --no-cache-dir --no-deps --wheel-dir "$2" ./clients/python .
    ;;
install)
    [ $# -eq 3 ] || usage
    "$python" -m venv "$3"
    # Both wheels by file name: cpa-client is not on a package index.
    "$3/bin/python" -m pip install --no-cache-dir --find-links "$2" \
        "$2"/cpa_client-*.whl "$2"/cpa_scheduler-*.whl
    "$3/bin/cpa" --help >/dev/null
    ;;
*)
    usage
    ;;
esac
