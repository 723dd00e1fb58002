#!/usr/bin/env bash
# `make test`: the full suite on the pinned torch, the newest and the oldest supported torch
# releases, and the package check, in about 15 minutes on two cores.
#
# The environments for the two other releases (.ci/envs.sh, cached between runs) are built in
# the background while the full suite runs; the package check follows the suite, then each
# other release runs its tests as soon as its environment is ready. Every stage's output is
# kept in build/ci/STAGE.log and shown when the stage ends; the run fails if any stage fails,
# and a pytest run that collects no test (exit 5) is a failure like any other.
#
#   DROPKIT_CI_STAGES   the stages to run (default "pinned package newest oldest")
set -uo pipefail
cd "$(dirname "$0")/.."
source .ci/envs.sh

STAGES=" ${DROPKIT_CI_STAGES:-pinned package newest oldest} "
LOGS=build/ci
rm -rf "$LOGS" && mkdir -p "$LOGS"
PY=.venv/bin/python
PYTEST_ARGS=(-q -n 2 --dist loadfile -p no:cacheprovider)

# The tests each other release runs: the core (stream, layers, native kernel, checkpoint replay),
# the dropout family, attention and the compiled paths; the newest release also runs the real
# third-party packages of requirements/interop.txt.
CORE=(tests/test_rng.py tests/test_dropout.py tests/test_core_v2.py tests/test_native.py
      tests/test_reproducibility.py tests/test_family_common.py tests/test_family_dropblock.py
      tests/test_family_edges.py tests/test_family_masks.py tests/test_family_wrappers.py
      tests/test_attention.py tests/test_torch_range.py)
NEWEST=("${CORE[@]}" tests/test_triton_compile.py tests/test_noise_kernels.py tests/interop)
OLDEST=("${CORE[@]}")

declare -A RESULT SECONDS_TAKEN
T0=$(date +%s)

stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

# run_stage NAME COMMAND...: run, log, time and record one stage.
run_stage() {
    local name=$1 start rc
    shift
    start=$(date +%s)
    stamp "$name: started"
    # A stage that hangs (a crashed test worker that never reports) is stopped after 30 minutes.
    timeout -k 30 1800 "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    SECONDS_TAKEN[$name]=$(( $(date +%s) - start ))
    RESULT[$name]=$rc
    echo "=============== $name (exit $rc, ${SECONDS_TAKEN[$name]}s) ==============="
    cat "$LOGS/$name.log"
    return 0
}

want() { [[ "$STAGES" == *" $1 "* ]]; }

# The environments of the other releases, built in the background.
if want newest; then
    ( t=$(date +%s); ensure_env newest requirements/interop.txt >"$LOGS/newest.env" 2>"$LOGS/newest-env.log"
      echo $? >"$LOGS/newest.env.rc"; echo $(( $(date +%s) - t )) >"$LOGS/newest.env.s" ) &
    NEWEST_PID=$!
fi
if want oldest; then
    ( t=$(date +%s); ensure_env oldest requirements/oldest.txt >"$LOGS/oldest.env" 2>"$LOGS/oldest-env.log"
      echo $? >"$LOGS/oldest.env.rc"; echo $(( $(date +%s) - t )) >"$LOGS/oldest.env.s" ) &
    OLDEST_PID=$!
fi

if want package; then
    ( ensure_env pkgtorch requirements/package-check.txt >/dev/null 2>"$LOGS/pkgtorch-env.log" ) &
    PKGTORCH_PID=$!
fi

want pinned && run_stage pinned "$PY" -m pytest "${PYTEST_ARGS[@]}" --junitxml="$LOGS/pinned.xml"
if want package; then
    wait "$PKGTORCH_PID"
    run_stage package "$PY" .ci/package_check.py "$LOGS"
fi

# other_release NAME PID TESTS...: wait for the environment, then run the tests in it.
other_release() {
    local name=$1 pid=$2 env
    shift 2
    wait "$pid"
    stamp "$name: environment ready after $(cat "$LOGS/$name.env.s")s (exit $(cat "$LOGS/$name.env.rc"))"
    cat "$LOGS/$name-env.log"
    if [ "$(cat "$LOGS/$name.env.rc")" != 0 ]; then
        RESULT[$name]=1
        SECONDS_TAKEN[$name]=0
        echo "$name: the environment could not be built; see above"
        return
    fi
    env=$(cat "$LOGS/$name.env")
    run_stage "$name" env PYTHONPATH=src DROPKIT_REQUIRE_INTEROP=1 bash -c \
        '"$0" -c "import sys, torch; print(\"torch\", torch.__version__, \"python\", sys.version.split()[0])" \
         && exec "$0" -m pytest "$@"' \
        "$env/bin/python" "${PYTEST_ARGS[@]}" --junitxml="$LOGS/$name.xml" "$@"
}
want newest && other_release newest "$NEWEST_PID" "${NEWEST[@]}"
want oldest && other_release oldest "$OLDEST_PID" "${OLDEST[@]}"

echo "=============== summary ==============="
status=0
for name in pinned package newest oldest; do
    want "$name" || continue
    echo "$name: exit ${RESULT[$name]:-missing}, ${SECONDS_TAKEN[$name]:-0}s"
    [ "${RESULT[$name]:-1}" = 0 ] || status=1
done
stamp "total"
"$PY" .ci/junit_total.py "$LOGS"
exit $status
