"""Every CSV the system writes for people to open goes through one writer that no spreadsheet reads a formula from."""

from __future__ import annotations

import csv
import io

from sharedcare.config import PROJECT_ROOT
from sharedcare.csv_out import CsvWriter


def test_a_cell_a_spreadsheet_would_read_as_a_formula_is_written_as_text() -> None:
    out = io.StringIO()
    cells = ["=1+1", "+1", "-1", "@A1", "\t=1", "\r=1", "\0=1", "C-1", "", "'=already text", 0.5, -3, None]
    CsvWriter(out).writerow(cells)
    assert next(csv.reader(io.StringIO(out.getvalue()))) == [
        "'=1+1", "'+1", "'-1", "'@A1", "'\t=1", "'\r=1", "'\0=1", "C-1", "", "'=already text", "0.5", "-3", ""]


def test_no_module_writes_csv_but_through_that_writer() -> None:
    """The helper only protects what goes through it: `csv.writer` is called in csv_out.py, and in the synthetic
    source systems' own extracts (which ingest reads back as a source system wrote them) only."""
    calls = {path.relative_to(PROJECT_ROOT).as_posix() for path in (PROJECT_ROOT / "src").rglob("*.py")
             if "csv.writer(" in path.read_text(encoding="utf-8") or "DictWriter(" in path.read_text(encoding="utf-8")}
    assert calls == {"src/sharedcare/csv_out.py", "src/sharedcare/synth/generator.py"}
