"""CSV the system writes for people to open: no cell reads as a spreadsheet formula.

A cell's text can come from a feed (a source id, a name), and `=HYPERLINK(...)` in it would run when an
operator opens the file in a spreadsheet (formula injection). As OWASP advises (CSV Injection; ASVS 1.2.10),
a text cell that starts with = + - @ TAB, CR or NUL is written with a single quote before it, which
spreadsheets read as "this is text" and do not show; quoting and doubled quotes are the csv module's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")


def text_cell(value: object) -> object:
    """`value`, with a quote before it if a spreadsheet would read it as a formula."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class CsvWriter:
    """csv.writer, with every cell passed through `text_cell`."""

    def __init__(self, handle: IO[str], **options: Any) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([text_cell(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)
