"""Durable file writes: atomic replacement, an exclusive lock, checksums.

A file is written under a temporary name in its own directory, flushed and fsynced, then
renamed over the target (`os.replace` is atomic on POSIX), and the directory is fsynced so the
rename itself survives a power cut. Readers see either the old file or the new one, never half.

A folder is replaced the same way (`atomic_folder`): written in full beside it, then renamed
into place; readers see the old folder or the new one.

Files are read through `open_regular` / `read_regular`: only regular files, opened without
blocking (a FIFO or a device in place of a photo, a video or a bundle file would otherwise
block forever or read until memory runs out), and no more than a stated number of bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import secrets
import shutil
import stat
import sys
import time
from typing import BinaryIO, Callable, Iterator

from edge_runtime import limits

# Temporary files start with this prefix, so a writer holding the directory's lock can tell
# the leftovers of a crashed write from everything else.
TEMP_PREFIX = ".pilltrack-tmp-"


class FileRefused(ValueError):
    """A path that is not a regular file, or a file over its size limit; the message names the
    file and the problem."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LockTimeout(TimeoutError):
    """Another command held a lock for longer than this one waits (limits.LOCK_WAIT_S)."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read ("not a regular file (a FIFO)"), or None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A file descriptor of `path`, which must be a regular file: anything else raises
    FileRefused before it is read. Checked before opening (a device is never opened) and again
    on the open file (a path swapped in between); opened with O_NONBLOCK, so even then a FIFO
    cannot block. The caller closes the descriptor."""
    source = os.fspath(path)
    try:
        problem = not_regular(os.stat(source).st_mode)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        problem = None
    if problem:
        raise FileRefused(source, problem)
    descriptor = os.open(source, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        problem = not_regular(os.fstat(descriptor).st_mode)
        if problem:
            raise FileRefused(source, problem)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The contents of the regular file `path`, at most `limit` bytes: a larger file, or one
    that is not a regular file, raises FileRefused (see `open_regular`)."""
    source = os.fspath(path)
    descriptor = open_regular(source)
    with os.fdopen(descriptor, "rb") as handle:
        size = os.fstat(descriptor).st_size
        if size > limit:
            raise FileRefused(source, f"{size} bytes, over the limit of {limit} bytes")
        data = handle.read(limit + 1)  # a file growing while it is read is held to the limit too
    if len(data) > limit:
        raise FileRefused(source, f"more than the limit of {limit} bytes")
    return data


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
def atomic_folder(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a new, empty folder beside the folder `path`; what the block writes there replaces
    `path` (or becomes it, when absent) once the block ends without an exception. On an exception
    `path` is left as it was, and the new folder is deleted.

    The swap is two renames, the previous folder aside and the new one in its place, and then the
    previous folder is deleted; should the second rename fail, the previous folder goes back. A
    process killed meanwhile leaves its folders under TEMP_PREFIX names, which the next
    replacement of `path` clears (putting the previous folder back first, if `path` is missing)."""
    target = pathlib.Path(os.path.abspath(os.fspath(path)))
    target.parent.mkdir(parents=True, exist_ok=True)
    retired = target.parent / f"{TEMP_PREFIX}old-{target.name}"
    for leftover in target.parent.glob(f"{TEMP_PREFIX}new-{target.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if retired.exists() and not target.exists():
        os.replace(retired, target)
    shutil.rmtree(retired, ignore_errors=True)
    staging = target.parent / f"{TEMP_PREFIX}new-{target.name}-{secrets.token_hex(6)}"
    staging.mkdir()  # like any new folder (0777 less the umask), not private as tempfile.mkdtemp makes it
    try:
        yield staging
        if target.exists():
            os.replace(target, retired)
        try:
            os.replace(staging, target)
        except BaseException:
            if retired.exists():
                os.replace(retired, target)
            raise
        fsync_directory(target.parent)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_LOCK_POLL_S = 0.1  # seconds between attempts to take a lock another process holds


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False, holder: str = "another process",
              wait_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold an `flock` on the lock file `path` for the block: exclusive (for writers; the file
    is created if absent) or, with `shared`, shared (for readers, who never create it).

    While a conflicting holder keeps it, one line on stderr says what is awaited (`holder`, who
    holds it) and for how long; after `wait_s` seconds (limits.LOCK_WAIT_S by default) of
    waiting, LockTimeout. The lock belongs to the open file, so a process must not take the
    same lock twice. The lock file must be a regular file (FileRefused otherwise, naming it: so
    is a symbolic link to nothing, which a writer would otherwise create wherever it points)."""
    source = os.fspath(path)
    wait_s = limits.LOCK_WAIT_S if wait_s is None else wait_s
    if os.path.islink(source) and not os.path.exists(source):
        raise FileRefused(source, f"a symbolic link to {limits.shown(os.readlink(source))}, which does not exist")
    flags = os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT
    try:
        descriptor = open_regular(source, flags, 0o644)
    except FileNotFoundError:  # a reader's lock file deleted meanwhile, or the writer's folder missing
        raise FileRefused(source, "does not exist" if shared else "cannot be created: its folder does not exist") from None
    try:
        operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        waited = 0.0  # counted in polls, not read from a clock: the same on a loaded machine
        while True:
            try:
                fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited == 0.0:
                    print(f"waiting for {source}: held by {holder}; giving up after {wait_s:g} s",
                          file=sys.stderr, flush=True)
                if waited >= wait_s:
                    raise LockTimeout(f"{source}: still held by {holder} after {wait_s:g} s of "
                                      "waiting; try again when it has finished") from None
                sleep(_LOCK_POLL_S)
                waited += _LOCK_POLL_S
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
