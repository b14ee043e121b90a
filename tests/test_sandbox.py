"""Tests for asarm_jax.evals.sandbox: verdicts, limits, and that the caller is never harmed."""
import glob
import os
import platform
import sys
import tempfile

import pytest

from asarm_jax.evals.sandbox import Result, run_many, run_program

LINUX_SECCOMP = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
# Re-enables ctypes inside the child, to try system calls behind the Python-level guards.
RAW_LIBC = ("import sys\ndel sys.modules['ctypes'], sys.modules['_ctypes']\n"
            "import ctypes\nlibc = ctypes.CDLL(None)\n")


def _child_pids() -> set[int]:
  """Pids of the live processes whose parent is this test process."""
  pids = set()
  for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
      with open(stat) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue  # Gone meanwhile.
    if int(fields[1]) == os.getpid():
      pids.add(int(stat.split("/")[2]))
  return pids


def test_passing_failing_and_broken_programs():
  assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", 5.0) == Result(
      True, "passed", "")
  failed = run_program("x = 1\nassert x == 2, 'wrong x'\n", 5.0)
  assert failed.status == "failed" and not failed.passed
  assert failed.detail == "AssertionError: wrong x (line 2)"
  assert "SyntaxError" in run_program("def f(:\n", 5.0).detail
  assert "NameError" in run_program("undefined_name\n", 5.0).detail


def test_early_exit_does_not_count_as_passed():
  assert run_program("import sys\nsys.exit(0)\n", 5.0).status == "failed"
  assert run_program("exit()\n", 5.0).status == "failed"
  exited = run_program("import os\nos._exit(0)\n", 5.0)
  assert exited.status == "failed" and "before finishing" in exited.detail


def test_infinite_loop_times_out_at_the_wall_clock_limit():
  result = run_program("while True:\n    pass\n", 1.0)
  assert result == Result(False, "timeout", "wall-clock limit of 1 s exceeded")
  assert not _child_pids()


def test_fork_bomb_fails_and_leaves_nothing_behind():
  my_pid = os.getpid()
  for program in ["import os\nwhile True:\n    os.fork()\n",
                  "import posix\nposix.fork()\n",
                  "import subprocess\nsubprocess.run(['true'])\n",
                  "import os\nos.system('true')\n",
                  "import multiprocessing\nmultiprocessing.Process(target=print).start()\n"]:
    result = run_program(program, 5.0)
    assert result.status == "failed", (program, result)
  assert os.getpid() == my_pid and not _child_pids()
  assert run_program("pass\n", 5.0).passed  # The caller can keep going.


@pytest.mark.skipif(not LINUX_SECCOMP and os.geteuid() == 0, reason="no kernel-level fork block")
def test_raw_fork_is_refused_by_the_kernel():
  # Bypasses the Python guards: the seccomp filter (or RLIMIT_NPROC for non-root) must refuse it.
  result = run_program(RAW_LIBC + "assert libc.fork() == -1\n", 5.0)
  assert result.passed, result
  assert not _child_pids()


def test_writes_outside_the_working_directory_are_blocked(tmp_path):
  outside = tmp_path / "escaped.txt"
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  for program in [f"open({str(outside)!r}, 'w').write('x')\n",
                  f"import pathlib\npathlib.Path({str(outside)!r}).write_text('x')\n",
                  f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\n",
                  f"import os\nos.remove({str(victim)!r})\n",
                  f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                  f"import os\nos.symlink({str(outside)!r}, 'link')\n",
                  f"import os\nos.chdir({str(tmp_path)!r})\n"]:
    result = run_program(program, 5.0)
    assert result.status == "failed" and "PermissionError" in result.detail, (program, result)
  assert not outside.exists()
  assert victim.read_text() == "keep me"


def test_writes_inside_the_working_directory_work_and_are_cleaned_up():
  pattern = os.path.join(tempfile.gettempdir(), "asarm_sandbox_*")
  before = set(glob.glob(pattern))
  program = ("import os\nopen('notes.txt', 'w').write('hi')\n"
             "assert open('notes.txt').read() == 'hi' and os.listdir('.') == ['notes.txt']\n")
  assert run_program(program, 5.0).passed
  assert set(glob.glob(pattern)) <= before  # Its temporary directory is gone.


def test_file_size_and_memory_limits():
  big_file = run_program("open('big', 'wb').write(b'x' * (8 << 20))\n", 5.0,
                         file_size_bytes=1 << 20)
  assert big_file.status == "failed" and "File too large" in big_file.detail
  big_alloc = run_program("x = bytearray(4 << 30)\n", 5.0, memory_bytes=1 << 30)
  assert big_alloc.status == "failed" and "MemoryError" in big_alloc.detail


def test_sockets_are_blocked():
  for program in ["import socket\nsocket.socket()\n",
                  "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
                  "import _socket\n_socket.socket()\n",
                  "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')\n"]:
    result = run_program(program, 5.0)
    assert result.status == "failed", (program, result)


@pytest.mark.skipif(not LINUX_SECCOMP, reason="seccomp filter only on Linux x86_64 / aarch64")
def test_raw_socket_and_kill_are_refused_by_the_kernel():
  assert run_program(RAW_LIBC + "assert libc.socket(2, 1, 0) == -1\n", 5.0).passed
  assert run_program(RAW_LIBC + "assert libc.kill(-1, 0) == -1\n", 5.0).passed


def test_run_many_keeps_order_and_isolates_programs():
  programs = ["pass\n", "assert False\n", "while True:\n    pass\n", "x = 2\nassert x == 2\n"]
  statuses = [r.status for r in run_many(programs, timeout_s=1.0, workers=2)]
  assert statuses == ["passed", "failed", "timeout", "passed"]


def test_non_ascii_source_and_bad_timeout():
  assert run_program("s = 'héllo ☃'\nassert len(s) == 7\n", 5.0).passed
  with pytest.raises(ValueError, match="timeout_s"):
    run_program("pass\n", 0.0)
