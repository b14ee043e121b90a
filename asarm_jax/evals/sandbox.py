"""Runs untrusted generated Python programs in a constrained child process.

`run_program` starts `python -I -B <this file>` in a fresh temporary working directory (deleted
afterwards) and in its own session, so that at the deadline the whole process group is killed. The
program arrives on stdin; before running it, the child (the `_child_*` functions below, stdlib
only):
  1. lowers its resource limits: address space, CPU seconds, file size, core size, and the number of
     processes of its user (`RLIMIT_NPROC`; the kernel does not apply it to root);
  2. on Linux x86_64 / aarch64 installs a seccomp filter that fails process creation (fork, vfork,
     clone, clone3), exec, `kill` and socket creation with EPERM, which holds for root as well;
  3. replaces the dangerous Python entry points (os.fork, os.system, subprocess.Popen,
     socket.socket, os.remove, shutil.rmtree, ...) with functions that raise PermissionError, makes
     ctypes and resource unimportable, and lets `open` / `os.open` write only inside the working
     directory;
  4. points stdin, stdout and stderr at /dev/null and reports its verdict on a private pipe.

These layers stop accidents of generated code (infinite loops, fork bombs, stray writes, sockets,
runaway memory) from harming the caller; they are not a defence against code written to escape.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout", "error"]

DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_FILE_SIZE_BYTES = 1 << 20
_DETAIL_CHARS = 1000


@dataclasses.dataclass(frozen=True)
class Result:
  """Outcome of one program.

  status: 'passed' (ran to the end), 'failed' (raised, exited early, or was killed by a limit),
  'timeout' (wall-clock or CPU-time limit), 'error' (the sandbox itself could not run it).
  """

  passed: bool
  status: Status
  detail: str = ""


def run_program(program: str, timeout_s: float, *, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                file_size_bytes: int = DEFAULT_FILE_SIZE_BYTES) -> Result:
  """Executes `program` in a sandboxed child process and reports whether it ran to completion.

  Args:
    program: complete Python source, e.g. prefix + completion + suffix + tests + 'check(f)'.
    timeout_s: wall-clock limit in seconds (interpreter start-up included); the child's process
      group is killed when it expires.
    memory_bytes: address-space limit of the child.
    file_size_bytes: largest file the child may write.
  """
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
  with tempfile.TemporaryDirectory(prefix="asarm_sandbox_", ignore_cleanup_errors=True) as workdir:
    settings = dict(workdir=os.path.realpath(workdir), cpu_s=math.ceil(timeout_s) + 1,
                    memory_bytes=memory_bytes, file_size_bytes=file_size_bytes)
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    try:
      proc = subprocess.Popen(
          [sys.executable, "-I", "-B", os.path.abspath(__file__)], cwd=workdir, env=env,
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          start_new_session=True)
    except OSError as e:
      return Result(False, "error", f"could not start the interpreter: {e}")
    with proc:
      timed_out = False
      try:
        stdin = (json.dumps(settings) + "\n" + program).encode(errors="replace")
        out, err = proc.communicate(stdin, timeout=timeout_s)
      except subprocess.TimeoutExpired:
        timed_out = True
      finally:
        _kill_group(proc.pid)  # The child and anything it managed to start.
    if timed_out:
      return Result(False, "timeout", f"wall-clock limit of {timeout_s:g} s exceeded")
    return _verdict(proc.returncode, out, err)


def run_many(programs: Sequence[str], timeout_s: float, workers: int = 2,
             **limits: int) -> list[Result]:
  """`run_program` over `programs` with `workers` concurrent children; results in input order."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda p: run_program(p, timeout_s, **limits), programs))


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass  # Nothing left in the group.


def _verdict(returncode: int, out: bytes, err: bytes) -> Result:
  """Reads the child's report lines (JSON) and exit status into a Result."""
  events = {}
  for line in out.decode(errors="replace").splitlines():
    try:
      message = json.loads(line)
      events[message["event"]] = message
    except (ValueError, TypeError, KeyError):
      continue  # Not a report line.
  if "finished" in events:
    finished = events["finished"]
    return Result(finished["passed"], "passed" if finished["passed"] else "failed",
                  finished["detail"])
  if "started" not in events:
    tail = err.decode(errors="replace")[-_DETAIL_CHARS:]
    return Result(False, "error", f"sandbox set-up failed (exit status {returncode}): {tail}")
  if returncode == -signal.SIGXCPU:
    return Result(False, "timeout", "CPU-time limit exceeded")
  if returncode < 0:
    return Result(False, "failed", f"killed by {signal.Signals(-returncode).name}")
  return Result(False, "failed", f"exited with status {returncode} before finishing")


# ----------------------------------------------------------------------------------------------
# Child side: runs as `python -I -B sandbox.py`, before and around the untrusted program.
# Imports needed only here are local, so that importing this module stays light.
# ----------------------------------------------------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

_BLOCKED_CALLS = {
    "os": ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp",
           "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
           "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg",
           "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
           "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "link", "symlink", "mkdir",
           "makedirs", "mkfifo", "mknod", "chdir", "fchdir", "chroot", "putenv", "unsetenv",
           "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
           "setresgid", "setsid", "setpgid", "nice"),
    "posix": ("fork", "forkpty", "system", "execv", "execve", "posix_spawn", "posix_spawnp",
              "kill", "killpg", "remove", "unlink", "rmdir", "rename", "replace", "truncate",
              "chmod", "chown", "link", "symlink", "mkdir", "chdir", "chroot", "setsid"),
    "_posixsubprocess": ("fork_exec",),
    "subprocess": ("Popen",),
    "shutil": ("rmtree", "move", "chown", "copytree"),
    "socket": ("socket", "SocketType", "socketpair", "fromfd", "create_connection",
               "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex"),
    "_socket": ("socket", "SocketType", "socketpair", "getaddrinfo", "gethostbyname"),
}
_UNIMPORTABLE = ("ctypes", "_ctypes", "resource", "psutil", "tkinter", "ipdb", "joblib")

# Seccomp: syscalls answered with EPERM, per architecture (audit arch, syscall numbers).
_SECCOMP_DENY = {
    # clone, fork, vfork, execve, kill, socket, socketpair, execveat, clone3
    "x86_64": (0xC000003E, (56, 57, 58, 59, 62, 41, 53, 322, 435)),
    # clone, execve, kill, socket, socketpair, execveat, clone3 (no fork/vfork here)
    "aarch64": (0xC00000B7, (220, 221, 129, 198, 199, 281, 435)),
}


def _child_main() -> None:
  """Entry point of the child: set up the sandbox, run the program, report on a private pipe."""
  header, source = sys.stdin.buffer.read().decode().split("\n", 1)
  settings = json.loads(header)
  report = os.fdopen(os.dup(1), "w")
  exit_now = os._exit
  _child_limit_resources(settings)
  _child_install_seccomp()
  null = os.open(os.devnull, os.O_RDWR)
  for fd in (0, 1, 2):
    os.dup2(null, fd)
  _child_install_guards(settings["workdir"])

  def send(**message) -> None:
    report.write(json.dumps(message) + "\n")
    report.flush()

  send(event="started")
  try:
    exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
  except BaseException as e:  # Anything, SystemExit included, means the checks did not finish.
    send(event="finished", passed=False, detail=_child_describe(e))
  else:
    send(event="finished", passed=True, detail="")
  exit_now(0)  # Skip atexit hooks and finalisers the program may have registered.


def _child_limit_resources(settings: dict) -> None:
  """Lowers memory, file size, core size, process count and CPU time (never raises a hard limit)."""
  import resource

  def lower(limit: int, value: int) -> None:
    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    resource.setrlimit(limit, (value, value))

  lower(resource.RLIMIT_AS, settings["memory_bytes"])
  lower(resource.RLIMIT_FSIZE, settings["file_size_bytes"])
  lower(resource.RLIMIT_CORE, 0)
  lower(resource.RLIMIT_NPROC, 1)  # No new processes; the kernel exempts root (seccomp covers it).
  _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
  cpu_s = settings["cpu_s"]
  if cpu_hard != resource.RLIM_INFINITY:
    cpu_s = min(cpu_s, cpu_hard - 1)
  resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL.


def _child_install_seccomp() -> None:
  """Installs the `_SECCOMP_DENY` filter; silently skipped where unsupported."""
  machine = platform.machine()
  if sys.platform != "linux" or machine not in _SECCOMP_DENY:
    return
  import ctypes

  arch, denied = _SECCOMP_DENY[machine]

  class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]

  class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

  load_word, jump_eq, jump_ge, ret = 0x20, 0x15, 0x35, 0x06  # BPF opcodes.
  allow, deny, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000  # SECCOMP_RET_*; errno 1 = EPERM.
  n = len(denied)
  program = [
      (load_word, 0, 0, 4),  # seccomp_data.arch
      (jump_eq, 1, 0, arch),
      (ret, 0, 0, kill),  # A foreign ABI (e.g. 32-bit calls): stop the process.
      (load_word, 0, 0, 0),  # seccomp_data.nr
      (jump_ge, n + 1, 0, 0x40000000),  # x32 system calls on x86_64 -> deny.
      *[(jump_eq, n - i, 0, nr) for i, nr in enumerate(denied)],
      (ret, 0, 0, allow),
      (ret, 0, 0, deny),
  ]
  filters = (SockFilter * len(program))(*[SockFilter(*op) for op in program])
  fprog = SockFprog(len(program), filters)
  libc = ctypes.CDLL(None)
  libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
  pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
  if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) == 0:
    libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.addressof(fprog), 0, 0)


def _child_install_guards(workdir: str) -> None:
  """Replaces dangerous Python entry points and confines writes made with open()/os.open()."""
  import builtins
  import importlib
  import io

  def blocked(name: str):
    def refuse(*args, **kwargs):
      raise PermissionError(f"sandbox: {name} is disabled")
    return refuse

  def inside(path) -> bool:
    if isinstance(path, int):
      return True  # An already open descriptor.
    real = os.fsdecode(os.path.realpath(path))
    return real == workdir or real.startswith(workdir + os.sep)

  real_open, real_os_open = builtins.open, os.open

  def confined_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not inside(file):
      raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
    return real_open(file, mode, *args, **kwargs)

  def confined_os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE_FLAGS and (dir_fd is not None or not inside(path)):
      raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
    return real_os_open(path, flags, mode, dir_fd=dir_fd)

  builtins.open = io.open = confined_open
  os.open = sys.modules["posix"].open = confined_os_open
  for module_name, names in _BLOCKED_CALLS.items():
    module = importlib.import_module(module_name)
    for name in names:
      if hasattr(module, name):
        setattr(module, name, blocked(f"{module_name}.{name}"))
  for module_name in _UNIMPORTABLE:
    sys.modules[module_name] = None


def _child_describe(exc: BaseException) -> str:
  """'Type: message (line n)' for an exception raised by the program."""
  line = None
  tb = exc.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code.co_filename == "<program>":
      line = tb.tb_lineno
    tb = tb.tb_next
  try:
    message = str(exc)
  except Exception:  # A broken __str__ in generated code.
    message = "<unprintable>"
  where = f" (line {line})" if line is not None else ""
  return f"{type(exc).__name__}: {message[:_DETAIL_CHARS]}{where}"


if __name__ == "__main__":
  _child_main()
