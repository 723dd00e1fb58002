# Virtual environments for CI's other torch releases, cached between runs.
#
# An environment is keyed by a hash of its requirements file, the Python version and this
# recipe, and lives in $DROPKIT_CI_CACHE (default ~/.cache/dropkit-ci): a run whose key exists
# reuses it as it is; a changed file builds a new one beside it and removes the old ones of
# the same name. dropkit itself is never installed into these environments: the tests run the
# checkout through PYTHONPATH=src (with the native library that `make install` built there),
# so a change to the code never invalidates them. Sourced by .ci/test.sh.

CI_CACHE="${DROPKIT_CI_CACHE:-$HOME/.cache/dropkit-ci}"
# The interpreter that creates the environments, and the pip that fills them (pip --python
# installs into an environment created without pip of its own, which skips ensurepip).
CI_BASE_PYTHON="${CI_BASE_PYTHON:-python3}"
CI_PIP="${CI_PIP:-.venv/bin/python -m pip}"
_RECIPE=1

# env_dir NAME REQUIREMENTS: the path of the environment for this requirements file.
env_dir() {
    local key
    key=$( { cat "$2"; "$CI_BASE_PYTHON" -c 'import sys; print(sys.version)'; echo "recipe $_RECIPE"; } \
        | sha256sum | cut -c1-16)
    echo "$CI_CACHE/$1-$key"
}

# ensure_env NAME REQUIREMENTS: create the environment unless it exists; print its path.
ensure_env() {
    local name=$1 req=$2 dir tmp
    dir=$(env_dir "$name" "$req")
    if [ -f "$dir/.complete" ]; then
        echo "$name: cached environment $dir" >&2
        echo "$dir"
        return 0
    fi
    mkdir -p "$CI_CACHE"
    # A venv records its own path: it is built where it will live, and marked complete last.
    rm -rf "$dir"
    "$CI_BASE_PYTHON" -m venv --without-pip "$dir" || return 1
    if ! $CI_PIP --python "$dir/bin/python" install --quiet --no-compile -r "$req" >&2; then
        echo "$name: installing $req failed" >&2
        rm -rf "$dir"
        return 1
    fi
    # Import torch once so that its bytecode is written here, not again in every run (and in
    # every copy the package check makes).
    "$dir/bin/python" -c "import torch" >/dev/null 2>&1 || true
    touch "$dir/.complete"
    # Older environments of the same name (other requirements) are not used again.
    find "$CI_CACHE" -maxdepth 1 -name "$name-*" ! -path "$dir" -exec rm -rf {} + 2>/dev/null
    echo "$name: built $dir" >&2
    echo "$dir"
}
