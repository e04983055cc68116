"""Durable file writes: atomic replacement, an exclusive lock, checksums.

A file is written under a temporary name in its own directory, flushed and fsynced, then
renamed over the target (`os.replace` is atomic on POSIX), and the directory is fsynced so the
rename itself survives a power cut. Readers see either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from typing import BinaryIO, Iterator

# Temporary files start with this prefix, so a writer holding the directory's lock can tell
# the leftovers of a crashed write from everything else.
TEMP_PREFIX = ".pilltrack-tmp-"


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make renames and deletions in `directory` durable."""
    descriptor = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; whatever the block writes there replaces `path`
    when the block ends without an exception, and is deleted otherwise.

    For libraries that insist on writing to a file name themselves (Annoy's `save`)."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    # The target's name ends the temporary one, so libraries that go by the suffix (Keras,
    # np.save) see the same one.
    temporary = os.path.join(
        directory, f"{TEMP_PREFIX}{secrets.token_hex(6)}-{os.path.basename(target)}"
    )
    # Created like any new file (0666 less the umask), not private as tempfile.mkstemp makes it.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace `path` atomically when the block ends
    without an exception; on an exception `path` is left as it was."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            yield handle  # atomic_path fsyncs the file once it is closed


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file at `path` by `data`, atomically and durably."""
    with atomic_writer(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False) -> Iterator[None]:
    """Hold an `flock` on the lock file `path` for the block: exclusive (for writers; the file
    is created if absent) or, with `shared`, shared (for readers, who never create it).

    Blocks until a conflicting holder lets go. The lock belongs to the open file, so a process
    must not take the same lock twice."""
    flags = os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT
    descriptor = os.open(os.fspath(path), flags, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
