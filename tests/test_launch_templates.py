"""SLURM, TPU-VM and GKE jobs: rendered for a sample config, parsed, and their wiring executed.

The scripts run under bash with stand-ins for scontrol/srun, curl (the TPU metadata server),
gcloud and python; the JobSet's commands are expanded the way Kubernetes does. Each stand-in
python records its argv, so the tests check every process's --process_id, --num_processes and
--coordinator_address, and that the training flags arrive unchanged.
"""

import json
import os
import re
import shlex
import stat
import subprocess
import sys

import pytest
import yaml

from launch import cluster, gke, render, slurm, tpu
from launch.job import Job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/pretrain.py:1b"  # global batch 256
TRAIN_ARGS = (f"--config={CONFIG}", "--config.optimizer.peak_lr=0.001",
              "--config.stage=it's a \"test\" $HOME", "--workdir=/shared/runs/1b")

FAKE_PYTHON = """#!/usr/bin/env python3
import json, os, sys
path = os.path.join(os.environ["FAKE_OUT"], f"{os.getpid()}.json")
json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, open(path, "w"))
"""
# Like the real srun, it passes SIGUSR1 and SIGTERM on to its tasks.
FAKE_SRUN = """#!/bin/bash
n=1
while [[ $1 == --* ]]; do
  case $1 in --ntasks=*) n=${1#--ntasks=} ;; esac
  shift
done
pids=()
for ((i = 0; i < n; i++)); do SLURM_PROCID=$i SLURM_NTASKS=$n "$@" & pids+=($!); done
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
while [[ -n $(jobs -rp) ]]; do wait; done
"""
FAKE_SCONTROL = """#!/bin/bash
[[ "$1 $2" == "show hostnames" && "$3" == "gpu-[07-08]" ]] && printf 'gpu-07\\ngpu-08\\n'
[[ "$1" == "requeue" ]] && echo "$2" >> "$FAKE_OUT/requeued"
exit 0
"""
# A training process that runs until SIGUSR1, then records it and exits 0 (as phi4_jax.main does
# after saving a checkpoint).
FAKE_TRAINING = """#!/usr/bin/env python3
import json, os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])  # (for sigwait)
open(os.path.join(os.environ["FAKE_OUT"], f"started.{os.getpid()}"), "w").close()
signal.sigwait([signal.SIGUSR1])
json.dump({"argv": sys.argv[1:], "signal": "SIGUSR1"}, open(os.path.join(os.environ["FAKE_OUT"], f"{os.getpid()}.json"), "w"))
"""
FAKE_CURL = """#!/bin/bash
case "${@: -1}" in
  */agent-worker-number) echo -n "$FAKE_WORKER_ID" ;;
  */worker-network-endpoints) echo -n "$FAKE_ENDPOINTS" ;;
  *) exit 22 ;;
esac
"""
# gcloud ... ssh --worker=all --command=SCRIPT: runs SCRIPT once per worker, like the real one.
FAKE_GCLOUD = """#!/bin/bash
echo "$@" > "$FAKE_OUT/gcloud_args"
for a in "$@"; do [[ $a == --command=* ]] && script=${a#--command=}; done
for ((w = 0; w < FAKE_WORKERS; w++)); do FAKE_WORKER_ID=$w bash -c "$script" & done
wait
"""


def _tool(directory, name, text):
  path = directory / name
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.fixture()
def fakes(tmp_path, monkeypatch):
  bin_dir, out = tmp_path / "bin", tmp_path / "out"
  bin_dir.mkdir()
  out.mkdir()
  for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("curl", FAKE_CURL),
                     ("gcloud", FAKE_GCLOUD)):
    _tool(bin_dir, name, text)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_OUT", str(out))
  return {"python": _tool(bin_dir, "python-stand-in", FAKE_PYTHON), "out": out}


def _processes(out):
  """{process_id: (flags after `-m phi4_jax.main`, cwd)} from the stand-in python's records."""
  procs = {}
  for path in out.glob("*.json"):
    record = json.loads(path.read_text())
    argv = record["argv"]
    assert argv[:2] == ["-m", "phi4_jax.main"]
    flags = dict(a.split("=", 1) for a in argv[2 + len(TRAIN_ARGS):])
    assert argv[2:2 + len(TRAIN_ARGS)] == list(TRAIN_ARGS)  # quoting survived every layer
    procs[int(flags["--process_id"])] = (flags, record["cwd"])
  return procs


def _bash_syntax_ok(text, tmp_path):
  path = tmp_path / "syntax_check.sh"
  path.write_text(text)
  return subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_slurm_script_wires_one_process_per_node(fakes, tmp_path):
  spec = slurm.Spec(nodes=2, gpus_per_node=4, partition="gpu", job_name="phi4-1b",
                    repo_dir=str(tmp_path), python=fakes["python"])
  text = cluster.emit(slurm, spec, Job(TRAIN_ARGS), str(tmp_path / "job.sbatch"))
  assert _bash_syntax_ok(text, tmp_path)
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
               "#SBATCH --partition=gpu", "#SBATCH --job-name=phi4-1b"):
    assert line in text.splitlines()
  env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[07-08]"}
  text = text.replace("mkdir -p /shared/runs/1b", f"mkdir -p {tmp_path}/runs")  # no /shared here
  subprocess.run(["bash", "-c", text], env=env, check=True, cwd=tmp_path)
  procs = _processes(fakes["out"])
  assert sorted(procs) == [0, 1]
  for flags, cwd in procs.values():
    assert flags["--num_processes"] == "2"
    assert flags["--coordinator_address"] == f"gpu-07:{4242 % 4096 + 61440}"
    assert cwd == str(tmp_path)


def test_slurm_checkpoints_before_the_time_limit_and_requeues_itself(fakes, tmp_path):
  """issue #24, item 13: SIGUSR1 --signal_s before the limit reaches the batch shell, which passes
  it to every task (each saves and exits) and puts the job back in the queue."""
  import signal
  import time
  trainer = _tool(tmp_path / "bin", "python-trainer", FAKE_TRAINING)
  spec = slurm.Spec(nodes=2, gpus_per_node=4, repo_dir=str(tmp_path), python=trainer, signal_s=120)
  text = cluster.emit(slurm, spec, Job(TRAIN_ARGS), str(tmp_path / "job.sbatch"))
  for line in ("#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
    assert line in text.splitlines()
  text = text.replace("mkdir -p /shared/runs/1b", f"mkdir -p {tmp_path}/runs")
  env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[07-08]"}
  (tmp_path / "job.sh").write_text(text)
  batch = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env, cwd=tmp_path)
  deadline = time.monotonic() + 60  # a hang bound, not a timing target
  while len(list(fakes["out"].glob("started.*"))) < 2:
    assert batch.poll() is None and time.monotonic() < deadline, "the tasks never started"
    time.sleep(0.05)
  batch.send_signal(signal.SIGUSR1)  # what sbatch --signal=B:USR1 does
  assert batch.wait(timeout=60) == 0
  records = [json.loads(p.read_text()) for p in fakes["out"].glob("*.json")]
  assert len(records) == 2 and all(r["signal"] == "SIGUSR1" for r in records)  # every task was told
  assert (fakes["out"] / "requeued").read_text().split() == ["4242"]


def test_slurm_cpu_job_requests_no_gpus_and_counts_host_devices(fakes, tmp_path, monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  spec = slurm.Spec(nodes=2, gpus_per_node=0, repo_dir=str(tmp_path), python=fakes["python"])
  text = cluster.emit(slurm, spec, Job(TRAIN_ARGS))
  assert _bash_syntax_ok(text, tmp_path)
  assert not [line for line in text.splitlines() if "gpus" in line and line.startswith("#SBATCH")]
  assert "#SBATCH --nodes=2" in text.splitlines() and slurm.devices(spec) == 2
  env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu-[07-08]"}
  text = text.replace("mkdir -p /shared/runs/1b", f"mkdir -p {tmp_path}/runs")
  subprocess.run(["bash", "-c", text], env=env, check=True, cwd=tmp_path)
  assert sorted(_processes(fakes["out"])) == [0, 1]
  # 3 host devices per process (from --setup, or the environment sbatch passes on): 6 in all
  three = "export XLA_FLAGS=--xla_force_host_platform_device_count=3"
  with pytest.raises(ValueError, match=r"global_batch_size: 256 .* data x fsdp = 6"):
    cluster.emit(slurm, slurm.Spec(nodes=2, gpus_per_node=0, setup=three), Job(TRAIN_ARGS))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert slurm.devices(slurm.Spec(nodes=2, gpus_per_node=0)) == 6
  assert slurm.devices(slurm.Spec(nodes=2, gpus_per_node=4)) == 8
  with pytest.raises(ValueError, match=r"--gpus_per_node must be >= 0"):
    slurm.Spec(gpus_per_node=-1)


def test_slurm_runs_this_interpreter_by_default(capfd):
  assert slurm.Spec().python == sys.executable
  assert cluster.main(slurm, ["--nodes=1", "--", *TRAIN_ARGS]) == 0
  assert f"  {shlex.quote(sys.executable)} \"${{TRAIN_ARGS[@]}}\"" in capfd.readouterr().out


@pytest.mark.parametrize("endpoints", ["10.0.0.5,10.0.0.6,10.0.0.7,10.0.0.8",
                                       "w-0:a1:10.0.0.5,w-1:a2:10.0.0.6,w-2:a3:10.0.0.7,w-3:a4:10.0.0.8"])
def test_tpu_vm_command_runs_every_worker_with_its_metadata(fakes, tmp_path, monkeypatch, endpoints):
  spec = tpu.Spec(tpu_name="my-v5p-32", zone="us-east5-a", project="proj", repo_dir=str(tmp_path),
                  python=fakes["python"], chips=16)
  job = Job(TRAIN_ARGS)
  text = cluster.emit(tpu, spec, job)
  assert _bash_syntax_ok(text, tmp_path)
  assert _bash_syntax_ok(tpu.render_worker(spec, job), tmp_path)
  monkeypatch.setenv("FAKE_WORKERS", "4")
  monkeypatch.setenv("FAKE_ENDPOINTS", endpoints)
  text = text.replace("mkdir -p /shared/runs/1b", f"mkdir -p {tmp_path}/runs")
  subprocess.run(["bash", "-c", text], check=True, cwd=tmp_path)
  gcloud_args = (fakes["out"] / "gcloud_args").read_text()
  assert gcloud_args.startswith("compute tpus tpu-vm ssh my-v5p-32 --zone=us-east5-a "
                                "--project=proj --worker=all --command=")
  procs = _processes(fakes["out"])
  assert sorted(procs) == [0, 1, 2, 3]
  for flags, _ in procs.values():
    assert flags["--num_processes"] == "4"
    assert flags["--coordinator_address"] == "10.0.0.5:8482"


def _k8s_expand(text, env):
  """Kubernetes' $(VAR) expansion of container command arguments."""
  return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


def test_gke_jobset_parses_and_wires_pod_index_to_process_id(tmp_path):
  spec = gke.Spec(image="us-docker.pkg.dev/p/r/phi4:1", name="phi4-1b", num_nodes=4, chips_per_node=4,
                  resource="google.com/tpu", gcs_bucket="my-bucket",
                  node_selector=["cloud.google.com/gke-tpu-accelerator=tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology=2x2x4"])
  args = tuple(a.replace("/shared/", "/gcs/") for a in TRAIN_ARGS)
  manifest = yaml.safe_load(cluster.emit(gke, spec, Job(args)))
  assert manifest["kind"] == "JobSet" and manifest["spec"]["network"]["enableDNSHostnames"]
  replicated = manifest["spec"]["replicatedJobs"]
  assert len(replicated) == 1 and replicated[0]["replicas"] == 1
  job = replicated[0]["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 4 and job["completionMode"] == "Indexed"
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "2x2x4"}
  assert pod["volumes"][0]["csi"]["volumeAttributes"]["bucketName"] == "my-bucket"
  (container,) = pod["containers"]
  assert container["resources"]["limits"] == {"google.com/tpu": 4}
  assert container["volumeMounts"] == [{"name": "gcs", "mountPath": "/gcs"}]
  env = {e["name"]: e for e in container["env"]}
  assert env["PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  # Pod hostnames under enableDNSHostnames: <jobset>-<replicated job>-<job index>-<pod index>.<jobset>
  coordinator_host = f"{manifest['metadata']['name']}-{replicated[0]['name']}-0-0.{manifest['metadata']['name']}"
  for index in range(4):
    values = {"COORDINATOR_ADDRESS": env["COORDINATOR_ADDRESS"]["value"],
              "NUM_PROCESSES": env["NUM_PROCESSES"]["value"], "PROCESS_ID": str(index)}
    argv = [_k8s_expand(a, values) for a in container["command"]]
    assert argv[:3] == ["python", "-m", "phi4_jax.main"] and argv[3:3 + len(args)] == list(args)
    assert argv[3 + len(args):] == [f"--coordinator_address={coordinator_host}:8476",
                                    "--num_processes=4", f"--process_id={index}"]


def test_config_is_checked_against_the_job_size(tmp_path):
  with pytest.raises(ValueError, match="global_batch_size: 256 .* data x fsdp = 12"):
    cluster.emit(slurm, slurm.Spec(nodes=3, gpus_per_node=4), Job(TRAIN_ARGS))
  with pytest.raises(ValueError, match="config.nope"):
    cluster.emit(slurm, slurm.Spec(nodes=1, gpus_per_node=8), Job((*TRAIN_ARGS, "--config.nope=1")))
  with pytest.raises(ValueError, match="must be an absolute path"):
    cluster.emit(slurm, slurm.Spec(), Job((f"--config={CONFIG}", "--workdir=runs/x")))
  with pytest.raises(ValueError, match="mount the bucket"):
    cluster.emit(tpu, tpu.Spec(tpu_name="t", zone="z"), Job((f"--config={CONFIG}", "--workdir=gs://b/x")))
  with pytest.raises(ValueError, match="outside the --gcs_bucket mount"):
    cluster.emit(gke, gke.Spec(image="i", gcs_bucket="b"), Job(TRAIN_ARGS))
  with pytest.raises(ValueError, match="launcher sets"):
    Job((*TRAIN_ARGS, "--process_id=0"))
  with pytest.raises(ValueError, match="--name='Phi4'"):
    gke.Spec(image="i", name="Phi4")


def test_cli_prints_and_submits(fakes, tmp_path, capfd):
  _tool(tmp_path / "bin", "sbatch", '#!/bin/bash\ncat > "$FAKE_OUT/submitted"\necho "Submitted batch job 7"\n')
  assert slurm.__name__ == "launch.slurm"
  assert cluster.main(slurm, ["--nodes=2", "--gpus_per_node=4", "--", *TRAIN_ARGS]) == 0
  printed = capfd.readouterr().out
  assert printed.startswith("#!/bin/bash\n#SBATCH --job-name=phi4\n")
  assert cluster.main(slurm, ["--nodes=2", "--gpus_per_node=4", "--submit", "--", *TRAIN_ARGS]) == 0
  assert "Submitted batch job 7" in capfd.readouterr().out
  assert (fakes["out"] / "submitted").read_text() == printed
  _tool(tmp_path / "bin", "sbatch", "#!/bin/bash\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
  assert cluster.main(slurm, ["--submit", "--", *TRAIN_ARGS]) == 1
  err = capfd.readouterr().err
  assert "invalid partition" in err and "sbatch (submitting the job) failed with status 1" in err
  with pytest.raises(SystemExit):
    cluster.main(tpu, ["--zone=z", "--", *TRAIN_ARGS])
  assert "--tpu_name" in capfd.readouterr().err


def test_fill_rejects_missing_and_unused_values():
  assert render.fill("a {{x}} b", {"x": 1}) == "a 1 b"
  with pytest.raises(KeyError, match=r"needs values for \['y'\]"):
    render.fill("{{x}} {{y}}", {"x": 1})
  with pytest.raises(KeyError, match=r"no placeholders for \['z'\]"):
    render.fill("{{x}}", {"x": 1, "z": 2})


def test_gke_restarts_a_failed_job_by_default_and_ships_the_image_it_runs(tmp_path):
  """issue #24, item 13: maxRestarts was 0, and no Dockerfile made the image the JobSet names."""
  spec = gke.Spec(image="r/phi4:1", num_nodes=2)
  manifest = yaml.safe_load(cluster.emit(gke, spec, Job(tuple(a.replace("/shared/", "/gcs/") for a in TRAIN_ARGS))))
  assert manifest["spec"]["failurePolicy"]["maxRestarts"] == spec.max_restarts >= 1
  lines = open(os.path.join(REPO, "Dockerfile")).read().splitlines()
  assert f"WORKDIR {spec.repo_dir}" in lines  # the JobSet's workingDir
  assert any(line.startswith("RUN pip install -e .") for line in lines) and "ARG JAX_EXTRA=\"\"" in lines
  copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
  assert {"phi4_jax", "experiments", "launch", "setup.py"} <= copied  # (what the command needs)
  assert "RUN python -m phi4_jax.main --help > /dev/null" in lines  # built and smoke-tested together
  assert spec.python == "python"  # the image's interpreter


def test_a_tpu_worker_without_the_repository_says_what_it_expects(fakes, tmp_path, monkeypatch):
  spec = tpu.Spec(tpu_name="my-v5p-8", zone="z", repo_dir=str(tmp_path / "missing"), python=fakes["python"])
  monkeypatch.setenv("FAKE_WORKER_ID", "1")
  monkeypatch.setenv("FAKE_ENDPOINTS", "10.0.0.5,10.0.0.6")
  out = subprocess.run(["bash", "-c", tpu.render_worker(spec, Job(TRAIN_ARGS))], capture_output=True, text=True)
  assert out.returncode == 1 and f"worker 1 has no {tmp_path / 'missing'}: put this repository there" in out.stderr
  assert not list(fakes["out"].glob("*.json"))  # nothing ran
