# Shared by the CI scripts (sourced).

# Runs a command and prints how long it took; `timed_summary` lists every step at the end.
CI_TIMES=()
timed() {
    local name=$1 start=$SECONDS
    shift
    "$@"
    CI_TIMES+=("$(printf '%6d s  %s' $((SECONDS - start)) "$name")")
    echo "ci: $name took $((SECONDS - start)) s"
}
timed_summary() {
    echo "ci: time per step"
    printf '%s\n' "${CI_TIMES[@]}"
}
