"""How every stage runs: `cli(main)` and `UserError`. Never run as __main__ and imports nothing from stages,
so that every module raises and catches the one same UserError class (a stage run as `python -m stages.params`
once had two: `__main__.UserError` and `stages.params.UserError`, and a 15-line traceback).

- A UserError is one line on stderr, `error: <file or parameter>: <problem>; <fix>`, and exit status 2.
- SIGTERM (a scheduler, a killed `dvc repro`) and Ctrl-C unwind the stage, so every `finally` runs (atomic
  writes remove their temporaries); the process then ends by the same signal, so its caller sees it killed,
  even when a library turned the signal's exception into its own (TensorFlow's nest: a TypeError).
  Ctrl-C prints one line (what a stage registered with `on_interrupt`, e.g. the last finished epoch).
- Should the unwinding not happen within GRACE seconds, a watcher thread, woken by the signal itself, removes
  the temporaries and ends the process. Needed: Keras' pythonify_logs turns each log value into a float
  inside a bare `except: pass`, and under JAX the main thread spends most of an epoch waiting there for the
  device, so the exception a signal handler raises is swallowed (training went on, SIGTERM ignored).
- A stage dies with the process that started it (Linux's parent-death signal), and under DVC with DVC when a
  shell stays between them (dash): a killed `dvc repro` leaves no stage behind to overwrite what the next
  `dvc repro` restores.
- A full disk (ENOSPC, a quota) is one line naming the file and the command to run again (`dvc repro` under
  DVC, else the command typed), exit status 1 (outputs are written under temporary names: nothing
  half-written is left).
- TensorFlow's and XLA's C++ start-up lines are filtered out of stderr.
"""

import contextlib
import ctypes
import errno
import os
import re
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

GRACE = 3.0  # seconds a signalled stage has to unwind before the watcher ends it
TEMPORARIES = set()  # live temporary outputs (stages.outputs), removed by the watcher if it ends the process
_NOTE = [lambda: ""]  # what a Ctrl-C line adds after "interrupted"
_STDERR = [2]  # the file descriptor of the real stderr (_without_native_noise puts a filter on fd 2)
_SIGNALLED = []  # the signal the stage was given, if any: what it then ends by, whatever exception unwinds it
PR_SET_PDEATHSIG = 1
SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh"}


class UserError(Exception):
    """Bad input: reported as one line that names the file or parameter and the fix."""


class _Terminated(BaseException):
    """SIGTERM, raised where the stage is, so that every `finally` (atomic_path's clean-up) runs as for
    Ctrl-C."""


def on_interrupt(note):
    """note() -> the words a Ctrl-C line adds, e.g. ' after epoch 3; `dvc repro` resumes from the
    checkpoint'."""
    _NOTE[0] = note


def _disk_full(e):
    """The OSError of a full disk in e's chain of causes (libraries wrap it: h5py, zipfile, shutil), else
    None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def rerun():
    """The command that runs this stage again: `dvc repro` under DVC ($DVC_STAGE), else this command line as
    typed (e.g. `python -m stages.report docs/results/cifar10-cpu`, which DVC does not run)."""
    if os.environ.get("DVC_STAGE"):
        return "dvc repro"
    return shlex.join(["python", *sys.orig_argv[1:]])


def _interrupted_line():
    try:
        note = _NOTE[0]()
    except Exception:  # noqa: BLE001 - the line must come out whatever state the stage is in
        note = ""
    return f"interrupted{note}"


def _raise_in_main_thread(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the clean-up short
    _SIGNALLED.append(signum)
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _end_by(signum):
    """Ends this process by signum's default action (the caller sees it killed by that signal); from any
    thread (the C library's signal(): Python's may only be called from the main thread)."""
    sys.stdout.flush()
    sys.stderr.flush()
    libc = ctypes.CDLL(None)
    libc.signal.argtypes, libc.signal.restype = (ctypes.c_int, ctypes.c_void_p), ctypes.c_void_p
    libc.signal(signum, None)  # SIG_DFL
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached


def _watch(wakeup):
    """Woken by a byte per signal (signal.set_wakeup_fd, written by the C-level handler even while the main
    thread is in C++): after GRACE seconds of unwinding, removes the temporaries and ends the process."""
    with os.fdopen(wakeup, "rb", buffering=0) as f:
        while byte := f.read(1):
            if byte[0] in (signal.SIGTERM, signal.SIGINT):
                threading.Event().wait(GRACE)
                if byte[0] == signal.SIGINT:  # to the real stderr: the filter's thread ends with the process
                    os.write(_STDERR[0], f"{_interrupted_line()}\n".encode())
                for path in list(TEMPORARIES):
                    shutil.rmtree(path, ignore_errors=True)
                _end_by(byte[0])


def _parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[1])


def _watch_launcher(shell, launcher):
    """SIGTERM to this process once the shell between it and DVC loses DVC (dash, DVC's /bin/sh when $SHELL is
    unset, does not exec the command it runs, and outlives a killed DVC)."""
    with contextlib.suppress(OSError, ValueError):
        while _parent_of(shell) == launcher:
            threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _die_with_parent():
    """SIGTERM to this process when the process that started it ends (Linux; a no-op elsewhere); under DVC
    ($DVC_STAGE set) started through a shell that stayed, when DVC ends."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the call: no signal will come
        raise _Terminated
    with contextlib.suppress(OSError, ValueError):
        shell = Path(f"/proc/{parent}/comm").read_text(encoding="utf-8").strip() in SHELLS
        if shell and os.environ.get("DVC_STAGE"):
            threading.Thread(target=_watch_launcher, args=(parent, _parent_of(parent)), daemon=True).start()


def _unraisable(hook):
    """sys.unraisablehook that keeps quiet about a signal's exception raised where Python cannot propagate it
    (a gc callback such as JAX's _xla_gc_callback, a __del__): the watcher ends the stage within GRACE."""

    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, (_Terminated, KeyboardInterrupt)):
            hook(unraisable)

    return quiet


def _arm(watch):
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    signal.signal(signal.SIGTERM, _raise_in_main_thread)
    signal.signal(signal.SIGINT, _raise_in_main_thread)
    if watch:
        _start_watcher()
    _die_with_parent()


def _start_watcher():
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read,), daemon=True).start()


def cli(main, watch=True):
    """Runs a stage's main(); see the module's docstring. watch=False: no watcher ends the process GRACE
    seconds after a signal (stages.parallel, whose clean-up, stopping its workers, takes longer by design)."""
    try:
        _arm(watch)
        with _without_native_noise():
            main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if _SIGNALLED:  # the signal's exception, raised inside a library that wrapped it (TensorFlow's nest:
            _end_by_signal(_SIGNALLED[0])  # a TypeError): still the signal, no traceback
        if (full := _disk_full(e)) is None:
            raise
        print(
            f"error: {full.filename or os.getcwd()}: no space left on its disk ({full.strerror or full}); "
            f"free some space there, then run `{rerun()}` again",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        _end_by_signal(signal.SIGINT)
    except _Terminated:
        _end_by_signal(signal.SIGTERM)


def _end_by_signal(signum):
    """After the stage unwound from a signal: Ctrl-C's one line, then the process ends by the signal."""
    if signum == signal.SIGINT:
        print(_interrupted_line(), file=sys.stderr)
    _end_by(signum)


# TensorFlow's and XLA's C++ start-up lines (absl format `I0000 00:00:… file.cc:N] …`), and the cuInit error
# of a CPU-only machine: not failures, yet they look like ones. Written to file descriptor 2 by C++, before
# any Python logging setting applies, so they are filtered there.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} \d\d:\d\d:|"
    r"E\d{4} .*(cuInit|cuda|CUDA))"
)


@contextlib.contextmanager
def _without_native_noise():
    """Everything written to stderr during the block, less the _NOISE lines."""
    sys.stderr.flush()
    saved, (read, write) = os.dup(2), os.pipe()
    os.dup2(write, 2)
    os.close(write)
    _STDERR[0] = saved

    def copy():
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not _NOISE.match(line.decode(errors="replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the thread reads to its end, then stops
        _STDERR[0] = 2
        thread.join(timeout=5)
        os.close(saved)
