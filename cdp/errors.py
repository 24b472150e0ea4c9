"""Errors a person can fix: one line naming the file, row or value."""

from __future__ import annotations

import os
from pathlib import Path


class CdpError(Exception):
    """An error caused by input or configuration, reported as one line without a stack trace."""


class SchemaError(CdpError):
    """An inbox file lacks a required column or cannot be read at all."""


class StoreBusyError(CdpError):
    """The DuckDB file is held by another process (a pipeline run or another command)."""


def check_output_file(path: Path, what: str) -> None:
    """Refuse, before any work is done, an ``--out`` that cannot become the ``what`` file: a directory, a
    path under a file, or a folder this user may not write in. A check, not a promise: the write itself
    still reports what only it can find (a read-only or full disk, a pseudo file system such as /proc).

    >>> try:
    ...     check_output_file(Path("/"), "export")
    ... except CdpError as exc:
    ...     print(exc)
    /: is a directory; name the export file to write
    """
    try:
        if path.is_dir():
            raise CdpError(f"{path}: is a directory; name the {what} file to write")
        _check_nearest_folder(path, path.parent)
    except OSError as exc:  # a folder on the way that may not even be looked into
        raise CdpError(f"{path}: cannot write the {what} file here ({exc.strerror})") from None


def check_output_folder(path: Path, what: str) -> None:
    """Refuse, before anything is written, a ``path`` that cannot become the ``what`` folder: an existing
    file, a path under a file, or a place this user may not write in.

    >>> try:
    ...     check_output_folder(Path("/etc/hostname"), "inbox")
    ... except CdpError as exc:
    ...     print(exc)
    /etc/hostname: is a file; name the inbox folder to write
    """
    try:
        if path.exists() and not path.is_dir():
            raise CdpError(f"{path}: is a file; name the {what} folder to write")
        _check_nearest_folder(path, path)
    except OSError as exc:
        raise CdpError(f"{path}: cannot write the {what} folder here ({exc.strerror})") from None


def _check_nearest_folder(path: Path, folder: Path) -> None:
    """The nearest existing folder at or above ``folder`` (missing ones are created on writing) is a folder
    this user may write in."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CdpError(f"{path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CdpError(f"{path}: cannot write in {folder} (permission denied)")
