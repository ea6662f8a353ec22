"""Small-number suppression for counts that leave the record with an export (TRUST SU2, SU3).

An export's summary tells its recipient how many people were left out and why (an opt-out, an
objection) and how many resources were withheld by rule. Exact small counts of that kind are
disclosive: "1 person opted out" of a practice's export points at somebody. So what the recipient sees
follows NHS England's HES method: 0 stays 0, 1 to 7 is `*`, anything else is rounded to the nearest 5.

No totals are shown, not even ones rounded from the exact cells: the property test found that such a
total can still give a star back at the edges (cells shown as 385, 385 and `*` beside a total of 765 can
only be 383, 383 and 1). Nor is the number of people in scope: less the people in the files, it would
be the exact number left out.

Written by hand: the rule is a few lines, and the statistical disclosure control libraries (sdcMicro,
sdc-tools) are R or unmaintained; none is worth a dependency for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SUPPRESSED = "*"
SMALLEST_SHOWN = 8
ROUND_TO = 5
METHOD = "HES: 1-7 shown as *, other counts rounded to the nearest 5; no totals"


def published_count(count: int) -> int | str:
    """A count as it may be shown outside: 0, `*` for 1 to 7, else the nearest multiple of 5."""
    if count < 0:
        raise ValueError(f"a count cannot be negative: {count}")
    if count == 0:
        return 0
    if count < SMALLEST_SHOWN:
        return SUPPRESSED
    return ROUND_TO * ((count + ROUND_TO // 2) // ROUND_TO)  # integers never tie at .5: no banker's rounding


def published_cells(counts: Mapping[str, int]) -> dict[str, int | str]:
    """Each cell of a table of counts, suppressed."""
    return {key: published_count(value) for key, value in sorted(counts.items())}


def published_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What an export's recipient is told about it (the exact summary stays in the job and its audit entry).

    People included and resources by type are counts of what the recipient holds, so they stay exact.
    """
    excluded: Mapping[str, int] = summary.get("people_excluded", {})
    withheld: Mapping[str, int] = summary.get("resources_withheld", {})
    return {"people_included": summary.get("people_included", 0),
            "people_excluded": published_cells(excluded),
            "resources_withheld": published_cells(withheld),
            "codings_withheld": published_cells(summary.get("codings_withheld", {})),
            "resources": dict(summary.get("resources", {})),
            # exact: how many Patients were generalised or suppressed can be counted in the Patient file itself
            **({"small_cells": summary["small_cells"]} if "small_cells" in summary else {}),
            "small_numbers": METHOD}
