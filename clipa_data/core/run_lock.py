"""One writing run at a time in a folder: ``download``, ``convert`` and ``tag`` hold an
exclusive lock on the folder they write, so a second run into the same place is refused with
one line instead of deleting the first one's temporary files or replacing its results.

The lock is ``flock`` on the folder itself: nothing is left behind, and a run that is killed
releases it with its process (no stale lock to remove by hand).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from clipa_data.core.errors import ClipaError


@contextlib.contextmanager
def only_run_in(folder: Path, command: str) -> Iterator[int]:
    """Hold ``folder``'s lock while the block runs; one line naming ``command`` (the one that
    would write there too) when another process holds it. Yields the locked descriptor: a child
    process that inherits it holds the lock as long as it lives (also after this one died)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClipaError(
                f"{folder}: another {command} is writing here now; let it finish (or stop "
                "it), then run this again"
            ) from None
        except OSError:
            pass  # a filesystem without flock (Lustre mounted without it): runs unguarded
        yield descriptor
    finally:
        os.close(descriptor)  # releases the lock
