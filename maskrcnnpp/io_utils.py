"""Atomic file and folder writes, so that a killed run never leaves output that looks complete."""
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import tempfile
import threading


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj, path, **kwargs):
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, **kwargs)


def write_text(text, path):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_csv(rows, path):
    """Write a list of dicts (same keys, in order) as CSV to ``path`` atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(table.getvalue(), path)


@contextlib.contextmanager
def terminate_as_exit():
    """Within the block, SIGTERM (``kill``, a batch system's time limit) raises SystemExit like
    Ctrl-C raises KeyboardInterrupt, so ``finally`` clauses clean up; in the main thread only,
    where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a temporary folder beside ``path`` and rename it to ``path`` when the block succeeds.

    The rename is atomic, so ``path`` either does not exist or is complete; an interrupted block
    (an exception, Ctrl-C or SIGTERM) removes the temporary folder. If another process created
    ``path`` meanwhile (two workers generating the same data), its copy is kept and ours
    discarded. With ``overwrite``, an existing ``path`` is replaced. The folder gets the usual
    mode (as ``mkdir`` with the umask), not mkdtemp's private one, so a lab group can read it.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    with terminate_as_exit():
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
        try:
            os.chmod(tmp, 0o777 & ~_UMASK)
            yield tmp
            if overwrite and os.path.exists(path):
                old = tempfile.mkdtemp(prefix=".old-" + os.path.basename(path) + "-", dir=parent)
                os.replace(path, os.path.join(old, "data"))
                shutil.rmtree(old)
            try:
                os.rename(tmp, path)
            except OSError:
                if not os.path.isdir(path):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
