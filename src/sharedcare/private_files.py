"""Files and folders holding patients' data are readable by the account that runs the service alone.

A SQLite store (with its journals), an extract's files and an exported audit log made under the umask most
hosts start with (022) would be readable by every account on the machine. These make them owner-only as
they are created, whatever the umask; a file or folder that already exists keeps the mode its owner gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_opener(path: str, flags: int) -> int:
    """An `opener` for `open()`: a file it creates is owner-only."""
    return os.open(path, flags, FILE_MODE)


def private_folder(path: Path) -> Path:
    """The folder, made owner-only if it is made here (its missing parents as the umask says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=FOLDER_MODE, exist_ok=True)
    return path


def create_private(path: Path) -> None:
    """Create an empty owner-only file here, unless one exists (SQLite then gives its journals its mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
