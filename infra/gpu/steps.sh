# What the GPU scripts share, sourced first thing with their arguments: . "$(dirname "$0")/steps.sh" "$@"
# Sets $out (OUT_DIR, the first argument, made absolute) and $py ($PYTHON, default python3), moves to the
# repository's root, starts $out/summary.txt afresh and defines `step`.
set -u
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
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - start )) s$([ "$rc" = 124 ] && echo " (time limit ${limit} s)")" >> "$out/summary.txt"
  return $rc
}
