"""The sandboxed side of `sandbox.run_python`: runs as its own fresh interpreter (`python -I -S`,
standard library only, single-threaded), confines itself, then execs the program.

  python -I -S sandbox_child.py run DIR UID CPU_S MEMORY_MB PARENT_PID   (root: UID is a fresh uid)
  python -I -S sandbox_child.py kill UID                  (root: SIGKILL every process of UID)

Confinement, each step where the kernel allows it:
  1. new mount, network, PID and IPC namespaces (root, or as root of a new user namespace
     otherwise): no network interface but a down loopback, no host abstract socket; every mount
     remounted read-only (its other flags kept); a fresh SCRATCH_MB tmpfs holding program.py as
     /tmp, /var/tmp and /dev/shm; a fresh /proc of the PID namespace (only the program's own
     processes; an empty one where the kernel refuses a procfs);
  2. resource limits: address space, CPU seconds, processes (per uid), file size, open files, no
     core dumps;
  3. as root: all groups dropped, then uid and gid set to UID (which owns nothing else); otherwise
     a nested user namespace, so that the read-only mounts are locked; no new privileges; killed
     when its runner dies;
  4. a seccomp filter: no AF_UNIX socket (a connect to a host socket file is not a write, so the
     read-only mounts do not stop it), no AF_UNIX datagram pair (which could connect), no io_uring.
The runner itself dies with its caller (a parent-death signal, and a wall-clock alarm as backstop).
Without a network namespace or a seccomp filter, sockets are refused inside the interpreter instead
(a weaker guard). Exit 97 with a line on stderr: no confinement of the file system was possible
(not root and no user namespace); the program is then not run at all.

The program runs under HARNESS: it reads a one-time token from stdin before the program starts,
executes the program's code, and only if that returned (no exception, SystemExit included) writes
the token to stdout and leaves with os._exit (no atexit handler, no exception hook, no thread of
the program runs after it). The supervisor counts a program as passed only when its token is
there: exiting 0 early, by any route, is a failure. (The harness shares the program's
interpreter: a program that searched its memory for the token could forge it; none of the ways
of ending a process can.)
"""

import ctypes
import os
import resource
import signal
import struct
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
PASSED = "phi4-sandbox-passed"  # HARNESS's last line: PASSED <token>
HARNESS = """import os, sys, traceback
def main():
  token = os.read(0, 64).decode().strip()  # (a local: not a global of the program's __main__)
  if sys.argv[1] == "refuse-sockets":
    import socket
    def _refused(*args, **kwargs):
      raise PermissionError("network access is disabled in the sandbox")
    socket.socket = socket.create_connection = socket.socketpair = socket.create_server = _refused
  try:
    with open("program.py", encoding="utf-8") as f:
      code = compile(f.read(), "program.py", "exec")
    sys.argv = ["program.py"]
    exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
  except BaseException as e:
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":  # (the harness's frames)
      tb = tb.tb_next
    os.write(2, "".join(traceback.format_exception(type(e), e, tb)).encode())  # (one write: whole)
    os._exit(1)
  sys.stdout.flush()
  sys.stderr.flush()
  os.write(1, f"\\n%s {token}\\n".encode())
  os._exit(0)
main()
""" % PASSED
# seccomp: (audit arch, socket, socketpair) by machine; io_uring_setup/enter/register are 425-427 on all
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 53), "aarch64": (0xC00000B7, 198, 199)}
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, AF_UNIX, SOCK_DGRAM, EACCES = 22, 2, 1, 2, 13

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


def _fresh_proc() -> None:
  """/proc of this PID namespace (call as its first process): the host's processes are not in it.
  Where the kernel refuses a procfs (some containers), an empty read-only tmpfs hides the host's."""
  if not _mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc"):
    if not _mount("tmpfs", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "tmpfs", "size=4k"):
      _unavailable("cannot replace the host's /proc")


def _seccomp_filter() -> bytes | None:
  """A classic-BPF seccomp program (struct sock_filter[]) refusing, with EACCES, socket(AF_UNIX),
  socketpair(AF_UNIX, SOCK_DGRAM) and io_uring; another architecture's calls kill the process.
  None on a machine whose numbers are not in SECCOMP_ARCH."""
  if os.uname().machine not in SECCOMP_ARCH:
    return None
  arch, socket_nr, socketpair_nr = SECCOMP_ARCH[os.uname().machine]
  ld, jeq, jge, and_, ret = 0x20, 0x15, 0x35, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE|K, ALU|AND|K, RET|K
  allow, deny, kill = 0x7FFF0000, 0x00050000 | EACCES, 0x80000000
  # (code, k, jump-if-true label, jump-if-false label); seccomp_data: nr @0, arch @4, args[i] @16+8i
  program = [("", ld, 4), ("", jeq, arch, None, "kill"), ("", ld, 0), ("", jge, 0x40000000, "kill", None),
             ("", jge, 425, "io_uring?", None), ("", jeq, socket_nr, "unix?", None),
             ("", jeq, socketpair_nr, None, "allow"),
             ("", ld, 16), ("", jeq, AF_UNIX, None, "allow"), ("", ld, 24), ("", and_, 0xF),
             ("", jeq, SOCK_DGRAM, "deny", "allow"),
             ("io_uring?", jge, 428, "allow", "deny"),
             ("unix?", ld, 16), ("", jeq, AF_UNIX, "deny", "allow"),
             ("deny", ret, deny), ("allow", ret, allow), ("kill", ret, kill)]
  labels = {op[0]: i for i, op in enumerate(program) if op[0]}
  out = b""
  for i, (_, code, k, *jumps) in enumerate(program):
    jt, jf = (labels[j] - i - 1 if j else 0 for j in (jumps or [None, None]))
    out += struct.pack("=HBBI", code, jt, jf, k)
  return out


def _install_seccomp() -> bool:
  """Installs _seccomp_filter (after no-new-privileges); False where none could be."""
  program = _seccomp_filter()
  if program is None:
    return False
  buffer = ctypes.create_string_buffer(program, len(program))

  class FProg(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

  fprog = FProg(len(program) // 8, ctypes.addressof(buffer))
  return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def _limit(cpu_s: int, memory_mb: int) -> None:
  for which, value in ((resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_CPU, cpu_s),
                       (resource.RLIMIT_NPROC, 64), (resource.RLIMIT_FSIZE, 64 * 2**20),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(which, (value, value))


def _exec_program(sandbox_dir: str, isolated: bool, root: bool, uid: int, cpu_s: int,
                  memory_mb: int) -> None:
  if isolated:
    _fresh_proc()
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
  filtered = _install_seccomp()
  python = os.path.join(sys.base_prefix, "bin", os.path.basename(os.path.realpath(sys.executable)))
  sockets = "allow-sockets" if isolated and filtered else "refuse-sockets"
  argv = [python, "-I", "-c", HARNESS, sockets]
  home = "/tmp" if isolated else sandbox_dir
  os.execve(python, argv, {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home,
                           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})


def _unavailable(why: str) -> None:
  print(f"sandbox unavailable: {why}", file=sys.stderr)
  sys.exit(UNAVAILABLE)


def run(sandbox_dir: str, uid: int, cpu_s: int, memory_mb: int, parent: int) -> None:
  """Confine, then run the program as the first process of a new PID namespace: when it exits
  (or is killed) the kernel kills and reaps everything it started. Exits as the program did.
  Dies when `parent` (its supervisor) does, and kills the program after 2 * cpu_s of wall clock."""
  _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != parent:  # (the supervisor died before the signal was set)
    sys.exit(1)
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
  signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
  signal.alarm(2 * cpu_s)  # (the supervisor's own timeout comes first; this outlives nothing)
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
    run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
  else:
    kill_all(int(sys.argv[2]))
