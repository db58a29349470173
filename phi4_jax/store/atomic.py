"""The one atomic write: a file (or folder) appears whole under its name, or not at all.

The temporary sits beside its target as `<target>.tmp-<host>-<pid>-<thread>`: processes of one job
share workdirs and caches (on NFS, from several hosts), and no two of them ever write the same
temporary. A write that fails or is interrupted removes its own temporary before the error goes on;
one killed outright leaves it behind under a name no reader looks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading


def temporary(path: str | os.PathLike) -> str:
  """The name this host, process and thread write `path` under before renaming it into place."""
  return f"{os.fspath(path)}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"


def process_alive(pid: int) -> bool:
  """Whether a process of this host runs as `pid` (the pid a temporary, a workdir lock or a sandbox
  directory names: one that no longer runs left it behind)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # (another user's: it runs)
    pass
  return True


def remove(path: str) -> None:
  """Removes a file, link or folder; nothing when it is not there."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    with contextlib.suppress(OSError):
      os.unlink(path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
  """Yields a temporary path beside `path` for the block to write (a file, or a folder it makes);
  when the block ends without error the file is synced and renamed onto `path`, else removed.

  A folder replaces only a missing or empty `path` (os.replace's rule): a caller racing another
  process's build catches the OSError and keeps the winner's folder."""
  path = os.fspath(path)
  tmp = temporary(path)
  try:
    yield tmp
    if os.path.isfile(tmp):
      fd = os.open(tmp, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    os.replace(tmp, path)
  finally:
    remove(tmp)  # (nothing is left there after a successful rename)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with replacing(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value, indent: int | None = 1) -> None:
  write_text(path, json.dumps(value, indent=indent))
