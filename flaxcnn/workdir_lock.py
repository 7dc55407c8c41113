"""One run per workdir: an exclusive lock that the operating system drops when its process dies.

The lock is `flock` on `<workdir>/.flaxcnn-lock`, held for the whole run; the file also records who
holds it (pid, host, start time) for the message a second run prints. A run that is killed holds
nothing any more (the kernel releases the lock with the process), so the next run takes over without
any clean-up; the stale pid in the file is just overwritten. The file is never deleted (deleting a
lock file races with a process that has opened it but not yet locked it).

Only process 0 of a multi-host run takes the lock (see `trainer.claim_workdir`): all processes of
one run share the workdir. `flock` is reliable on local disks; some network filesystems ignore it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from flaxcnn.errors import UserError, warn

LOCK_NAME = ".flaxcnn-lock"


class WorkdirLock:
    """An exclusive lock on a workdir, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    @classmethod
    def acquire(cls, workdir: str | os.PathLike) -> "WorkdirLock":
        """Takes the lock of `workdir` (which must exist), or raises a one-line UserError that
        names the process holding it."""
        lock = cls(workdir)
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                warn(f"cannot lock workdir {workdir} ({e.strerror}): nothing stops a second run "
                     "from using it at the same time")
                return lock
            raise UserError(f"workdir {workdir} is in use by another run ({lock.holder()}); wait "
                            "for it to finish or stop it, or pass another --workdir") from None
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        lock._fd = fd
        return lock

    def holder(self) -> str:
        """Who holds the lock, in words, from the file (written just after locking)."""
        try:
            owner = json.loads(self.path.read_text())
            return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):  # empty for a moment after locking
            return f"a process that has locked {self.path} and not yet written its pid there"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None
