# What the GPU scripts share, sourced first thing with their arguments: . "$(dirname "$0")/steps.sh" "$@"
# Sets $out (OUT_DIR, the first argument, made absolute) and $py ($PYTHON, default python3), moves to the
# repository's root, starts $out/summary.txt afresh and defines `step`. With STEPS_BUDGET_S set, the steps
# together take at most that many seconds: each step's limit is cut to what is left, and a step that would
# get under 15 s is skipped (noted in the summary), so that a run ends, summary written, before the caller's
# own limit (the device tool's 600 s a command) kills it.
set -u
deadline=$(( $(date +%s) + ${STEPS_BUDGET_S:-1000000000} ))
out="${1:?usage: PYTHON=python3 $0 OUT_DIR}"
py="${PYTHON:-python3}"
cd "$(dirname "$0")/../.."
mkdir -p "$out"
out="$(cd "$out" && pwd)"
: > "$out/summary.txt"

step() {  # step NAME LIMIT_S LOG COMMAND...: run it under a time limit, note its status and duration
  local name=$1 limit=$2 log=$3 start rc
  shift 3
  start=$(date +%s)
  if [ $(( deadline - start )) -lt 15 ]; then
    echo "$name: skipped, the run's budget (STEPS_BUDGET_S=${STEPS_BUDGET_S:-}) is spent" >> "$out/summary.txt"
    return 124
  fi
  [ $(( deadline - start )) -lt "$limit" ] && limit=$(( deadline - start ))
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - start )) s$([ "$rc" = 124 ] && echo " (time limit ${limit} s)")" >> "$out/summary.txt"
  return $rc
}
