"""Safe output files: atomic replacement, and refusing to write onto a file that is also read.

A program's result file either keeps its previous content or holds the complete new one, never a truncated
mix: everything is written to a temporary file in the destination's folder (same file system), flushed to
disk, then renamed over the destination with `os.replace`, which POSIX makes atomic. The temporary file is
removed on any error, including KeyboardInterrupt.

Example:
    >>> with atomic_open("results.json") as handle:
    ...     json.dump(report, handle)
    >>> with atomic_path("bev.png") as tmp:  # for writers that take a path
    ...     fig.savefig(tmp)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["InputFiles", "atomic_open", "atomic_path", "staged_files"]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable; some file systems cannot sync a folder, which is not an error."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """Flushes ``tmp`` to disk and renames it over ``path``."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _temporary_beside(path: Path) -> Path:
    """Creates an empty, new temporary file in ``path``'s folder and returns its path.

    The name keeps ``path``'s suffix, because some writers pick the format from it (matplotlib's savefig) or
    append one when it is missing (numpy.savez). The file gets the mode of the file it will replace, or the
    default mode under the umask when there is none.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        return tmp
    raise FileExistsError(f"no free temporary file name beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on normal exit its file atomically replaces ``path``.

    Write the whole result to the yielded path (``numpy.ndarray.tofile``, ``torch.save``, ``savefig``, ...).
    When the block raises, ``path`` keeps its previous content (or stays absent) and the temporary file is
    removed. ``path``'s folder is created when missing. When ``path`` is a symbolic link, the link itself is
    replaced by the new file; the file it pointed to is left as it was.

    Args:
        path: the destination file.

    Yields:
        The temporary file's path: in the same folder, with the same suffix, existing and empty.

    Raises:
        IsADirectoryError: ``path`` is a folder (before anything is written).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open` for writing whose file atomically replaces ``path`` when the block exits normally.

    Args:
        path: the destination file.
        mode: "w" (text) or "wb" (binary); "x" and "a" make no sense for a new temporary file.
        **kwargs: passed to `open` (encoding, newline, ...).

    Yields:
        The open file object; it is closed, flushed to disk and renamed over ``path`` after the block. When
        the block raises, ``path`` is untouched and the temporary file removed.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike) -> Iterator[Path]:
    """For writers that fill a folder themselves: each file they write lands in ``folder`` atomically.

    Yields an empty staging folder inside ``folder`` (so on the same file system). When the block exits
    normally, every file written under it replaces the file of the same relative path in ``folder``, one
    by one (each atomically; subfolders are created as in the staging folder). The staging folder is
    removed however the block exits; when it raises, nothing in ``folder`` is touched.

    Args:
        folder: the destination folder, created when missing.

    Yields:
        The staging folder's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        for current, subfolders, files in os.walk(staging):
            target = folder / Path(current).relative_to(staging)
            target.mkdir(exist_ok=True)
            for name in sorted(files):
                if (target / name).is_dir():
                    raise IsADirectoryError(f"{target / name} is a folder, not a file")
                _commit(Path(current) / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class InputFiles:
    """The files a program reads, to refuse an output path that would overwrite one of them.

    An output clashes with an input when both resolve (symbolic links followed) to the same path, or, for
    files that exist, when they are the same file on disk (same device and inode), which also catches hard
    links and bind mounts. Inputs that do not exist yet still count by their resolved path, so that a program
    never reads back what it has just written in place of an input.

    Example:
        >>> inputs = InputFiles()
        >>> inputs.add("the scan", "d/scan.bin")
        >>> inputs.add("the ground-truth labels", "d/scan.label")
        >>> inputs.clash("d/scan.label")
        ('the ground-truth labels', PosixPath('d/scan.label'))
    """

    def __init__(self) -> None:
        self._by_path: dict[str, tuple[str, Path]] = {}
        self._by_inode: dict[tuple[int, int], tuple[str, Path]] = {}

    def __len__(self) -> int:
        return len(self._by_path)

    def add(self, what: str, *paths: str | os.PathLike | None) -> None:
        """Records files as read.

        Args:
            what: how an error message names them, e.g. "the checkpoint" or "a dataset file".
            *paths: the files; None entries (options not given) are skipped.
        """
        for path in paths:
            if path is None:
                continue
            path = Path(path)
            self._by_path.setdefault(os.path.realpath(path), (what, path))
            with contextlib.suppress(OSError):
                info = os.stat(path)
                self._by_inode.setdefault((info.st_dev, info.st_ino), (what, path))

    def add_all(self, what: str, paths: Iterable[str | os.PathLike | None]) -> None:
        """`add` for an iterable of paths."""
        self.add(what, *paths)

    def clash(self, output: str | os.PathLike) -> tuple[str, Path] | None:
        """The input that writing ``output`` would overwrite, as (what, path as it was added), or None."""
        hit = self._by_path.get(os.path.realpath(output))
        if hit is not None:
            return hit
        try:
            info = os.stat(output)
        except OSError:
            return None
        return self._by_inode.get((info.st_dev, info.st_ino))
