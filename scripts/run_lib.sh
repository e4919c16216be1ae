# shellcheck shell=bash
# Shared by the long-run scripts (table1_cpu.sh, frontier.sh, regime_search.sh): source it after setting
#   out    the output folder (logs go to $out/logs/<dir relative to out, '/' -> '_'>.log)
#   base   the overrides every run gets
#   train  the training command (e.g. ".venv/bin/python -m selective_backprop.train")
#   jobs   how many runs at a time (capped here at the cores / OMP_NUM_THREADS)
# then feed "DIR OVERRIDES..." lines to `phase`, which returns when the last of them has ended.
# A run that fails prints "FAILED DIR (see LOG)" and the others go on; re-running a script resumes
# unfinished runs and skips finished ones (the trainer does that, from DIR).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "JOBS=$jobs: accepted: an integer >= 1" >&2; exit 2; }
[[ $OMP_NUM_THREADS =~ ^[1-9][0-9]*$ ]] || { echo "OMP_NUM_THREADS=$OMP_NUM_THREADS: accepted: an integer >= 1" >&2; exit 2; }
_cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)   # not nproc: it reports OMP_NUM_THREADS
_fit=$(( _cores / OMP_NUM_THREADS > 0 ? _cores / OMP_NUM_THREADS : 1 ))
if [ "$jobs" -gt "$_fit" ]; then   # more runs than cores would time each other's waits
  echo "JOBS=$jobs x OMP_NUM_THREADS=$OMP_NUM_THREADS exceeds the $_cores cores: running $_fit at a time" >&2
  jobs=$_fit
fi
mkdir -p "$out/logs"

run() {  # run DIR OVERRIDES...: one training run, its log beside the others
  local dir=$1; shift
  local log
  log="$out/logs/$(echo "${dir#"$out"/}" | tr '/' '_').log"
  # shellcheck disable=SC2086
  $train $base "$@" hydra.run.dir="$dir" > "$log" 2>&1 || echo "FAILED $dir (see $log)" >&2
}
export -f run
export out base train

phase() {  # feed "DIR OVERRIDES..." lines to JOBS parallel runs; returns when the last one has ended
  xargs -d '\n' -P "$jobs" -I{} bash -c 'run {}'
}
