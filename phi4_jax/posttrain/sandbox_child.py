"""The sandboxed side of `sandbox.run_python`: runs as its own fresh interpreter (`python -I -S`,
standard library only, single-threaded), confines itself, then execs the program.

  python -I -S sandbox_child.py run DIR UID CPU_S MEMORY_MB   (root: UID is a fresh unprivileged uid)
  python -I -S sandbox_child.py kill UID                      (root: SIGKILL every process of UID)

Confinement, each step where the kernel allows it:
  1. new mount, network, PID and IPC namespaces (root, or as root of a new user namespace
     otherwise): no network interface but a down loopback; every mount remounted read-only (its
     other flags kept); a fresh SCRATCH_MB tmpfs holding program.py as /tmp, /var/tmp and /dev/shm;
  2. resource limits: address space, CPU seconds, processes (per uid), file size, open files, no
     core dumps;
  3. as root: all groups dropped, then uid and gid set to UID (which owns nothing else); otherwise
     a nested user namespace, so that the read-only mounts are locked; no new privileges; killed
     when its runner dies.
Without a network namespace, sockets are refused inside the interpreter instead (a weaker guard).
Exit 97 with a line on stderr: no confinement of the file system was possible (not root and no
user namespace); the program is then not run at all.
"""

import ctypes
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# statvfs flags a read-only remount must keep (the kernel refuses to clear locked ones): ST_ -> MS_
KEPT_FLAGS = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SCRATCH_MB = 256  # the program's /tmp: a tmpfs this large (nothing it writes reaches a disk)
UNAVAILABLE = 97  # exit status: no sandbox could be set up, nothing was run
PSEUDO_FS = ("/proc", "/sys", "/dev")  # kernel interfaces: left as they are (root-only writes)
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # where programs expect to write: one private tmpfs
NO_SOCKETS = """import socket, runpy
def _refused(*args, **kwargs):
  raise PermissionError("network access is disabled in the sandbox")
socket.socket = socket.create_connection = socket.socketpair = socket.create_server = _refused
runpy.run_path("program.py", run_name="__main__")
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, flags, fstype=None, data=None) -> bool:
  enc = lambda s: None if s is None else s.encode()
  return _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def _enter_user_namespace() -> bool:
  uid, gid = os.getuid(), os.getgid()
  if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC) != 0:
    return False
  for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
    with open(f"/proc/self/{name}", "w") as f:
      f.write(text)
  return True


def _blocking_ancestor(path: str) -> str | None:
  """The topmost directory above `path` that other users cannot enter (e.g. /root), if any."""
  parts = os.path.abspath(path).split("/")[1:]
  for i in range(1, len(parts) + 1):
    ancestor = "/" + "/".join(parts[:i])
    if not os.stat(ancestor).st_mode & 0o001:
      return ancestor
  return None


def _expose_interpreter(sandbox_dir: str) -> None:
  """Make the interpreter's prefix readable at its own path (its libraries are found by absolute
  run path) when it lives under a private directory, which is hidden behind an empty tmpfs."""
  prefix = sys.base_prefix
  blocker = _blocking_ancestor(prefix)
  if blocker is None:
    return
  stash = os.path.join(sandbox_dir, ".python")
  os.mkdir(stash, 0o755)
  _mount(prefix, stash, MS_BIND | MS_REC)
  _mount("tmpfs", blocker, 0, "tmpfs")
  os.makedirs(prefix, 0o755, exist_ok=True)
  for d in range(len(blocker), len(prefix) + 1):  # the recreated path: enterable by anyone
    if d == len(prefix) or prefix[d] == "/":
      os.chmod(prefix[:d] or "/", 0o755)
  _mount(stash, prefix, MS_BIND | MS_REC)
  _libc.umount2(stash.encode(), 2)  # MNT_DETACH
  os.rmdir(stash)


def _confine_mounts(sandbox_dir: str, uid: int | None) -> None:
  """Every mount read-only (its other flags kept), then a fresh size-limited tmpfs as /tmp,
  /var/tmp and /dev/shm holding program.py; exits UNAVAILABLE when the scratch cannot be set up."""
  _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
  _expose_interpreter(sandbox_dir)
  with open(os.path.join(sandbox_dir, "program.py"), "rb") as f:
    program = f.read()
  with open("/proc/self/mounts") as f:
    targets = [line.split()[1].replace("\\040", " ") for line in f]
  for target in sorted(set(targets)):
    if any(target == p or target.startswith(p + "/") for p in PSEUDO_FS):
      continue
    try:
      kept = sum(ms for st, ms in KEPT_FLAGS.items() if os.statvfs(target).f_flag & st)
    except OSError:
      continue
    _mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
  if not _mount("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "tmpfs", f"size={SCRATCH_MB}m,mode=1777"):
    _unavailable("cannot mount a tmpfs on /tmp")
  for target in SCRATCH[1:]:
    if os.path.isdir(target) and not _mount("/tmp", target, MS_BIND):
      _unavailable(f"cannot bind the scratch tmpfs over {target}")
  with open("/tmp/program.py", "wb") as f:
    f.write(program)
  if uid is not None:
    os.chown("/tmp/program.py", uid, uid)


def _limit(cpu_s: int, memory_mb: int) -> None:
  for which, value in ((resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_CPU, cpu_s),
                       (resource.RLIMIT_NPROC, 64), (resource.RLIMIT_FSIZE, 64 * 2**20),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(which, (value, value))


def _exec_program(sandbox_dir: str, isolated: bool, root: bool, uid: int, cpu_s: int,
                  memory_mb: int) -> None:
  os.chdir("/tmp" if isolated else sandbox_dir)
  _limit(cpu_s, memory_mb)
  if root:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
  elif isolated:  # a nested user namespace: the mounts above become locked, read-only for good
    _libc.unshare(CLONE_NEWUSER)
  _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # (after setuid, which clears it)
  python = os.path.join(sys.base_prefix, "bin", os.path.basename(os.path.realpath(sys.executable)))
  argv = [python, "-I", "program.py"] if isolated else [python, "-I", "-c", NO_SOCKETS]
  home = "/tmp" if isolated else sandbox_dir
  os.execve(python, argv, {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home,
                           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})


def _unavailable(why: str) -> None:
  print(f"sandbox unavailable: {why}", file=sys.stderr)
  sys.exit(UNAVAILABLE)


def run(sandbox_dir: str, uid: int, cpu_s: int, memory_mb: int) -> None:
  """Confine, then run the program as the first process of a new PID namespace: when it exits
  (or is killed) the kernel kills and reaps everything it started. Exits as the program did."""
  root = os.getuid() == 0
  flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
  isolated = (_libc.unshare(flags) == 0) if root else _enter_user_namespace()
  if not isolated and not root:
    _unavailable("not root and no user namespace (cannot confine the file system)")
  if isolated:
    _confine_mounts(sandbox_dir, uid if root else None)
  elif _blocking_ancestor(sys.base_prefix):
    _unavailable(f"no mount namespace, and the interpreter under {_blocking_ancestor(sys.base_prefix)} "
                 "cannot be run by an unprivileged user")
  pid = os.fork()
  if pid == 0:
    try:
      _exec_program(sandbox_dir, isolated, root, uid, cpu_s, memory_mb)
    finally:
      os._exit(127)
  _, status = os.waitpid(pid, 0)
  if os.WIFSIGNALED(status):  # die of the same signal, so the supervisor sees it
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
  sys.exit(os.WEXITSTATUS(status))


def kill_all(uid: int) -> None:
  """SIGKILL every process of `uid` (kill(-1) as that uid reaches exactly its own processes)."""
  os.setgroups([])
  os.setgid(uid)
  os.setuid(uid)
  try:
    os.kill(-1, signal.SIGKILL)
  except ProcessLookupError:
    pass


if __name__ == "__main__":
  if sys.argv[1] == "run":
    run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
  else:
    kill_all(int(sys.argv[2]))
