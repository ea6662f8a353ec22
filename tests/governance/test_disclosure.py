"""Small-number suppression of what an export tells its recipient (TRUST SU2, SU3)."""

from __future__ import annotations

from itertools import product

from hypothesis import given
from hypothesis import strategies as st

from sharedcare.governance.disclosure import SUPPRESSED, published_count, published_summary

counts = st.dictionaries(st.sampled_from(["deny-opt-out", "deny-objection-all", "sensitive-category",
                                          "confidential", "unreadable"]), st.integers(0, 400))


def test_small_counts_are_stars_and_others_round_to_the_nearest_five() -> None:
    shown = {n: published_count(n) for n in (0, 1, 7, 8, 10, 12, 13, 17, 18, 1_234)}
    assert shown == {0: 0, 1: "*", 7: "*", 8: 10, 10: 10, 12: 10, 13: 15, 17: 15, 18: 20, 1_234: 1_235}


@given(st.integers(0, 100_000))
def test_every_shown_count_is_zero_a_star_or_a_multiple_of_five(count: int) -> None:
    shown = published_count(count)
    assert shown == SUPPRESSED if 1 <= count <= 7 else (isinstance(shown, int) and shown % 5 == 0)
    assert shown == SUPPRESSED or abs(shown - count) <= 2


@given(counts)
def test_no_cell_of_the_summary_is_shown_exactly_when_it_is_small(excluded: dict[str, int]) -> None:
    summary = published_summary({"people_seen": 500, "people_included": 480, "people_excluded": excluded})
    assert "people_seen" not in summary  # less the people in the files, it is the exact number left out
    for rule, n in excluded.items():
        assert summary["people_excluded"][rule] == published_count(n)
    assert not [key for key in summary if "total" in key or "seen" in key]


@given(st.dictionaries(st.sampled_from(["deny-opt-out", "sensitive-category", "unreadable"]), st.integers(0, 400),
                       max_size=2), st.sampled_from(["deny-objection-all", "confidential"]), st.integers(1, 7))
def test_a_suppressed_cell_cannot_be_recovered_from_the_totals(others: dict[str, int], rule: str,
                                                               small: int) -> None:
    """Differencing: the recipient knows each other cell only as shown (a star is 1 to 7, a rounded count
    is within 2 of it), and for every table some other value of the suppressed cell shows exactly the
    same summary, so nothing shown can be subtracted to give it back. This fails if a total is shown,
    exact (20 and * beside 23) or even rounded from exact cells (385, 385 and * beside 765 forces 1)."""
    table = {**others, rule: small}
    seen = published_summary({"people_excluded": table, "resources_withheld": table})

    def could_be(n: int) -> range:
        return range(1, 8) if 1 <= n <= 7 else range(max(n - 4, 0), n + 5)  # wide; `shown` keeps the true

    alike = [other for other in range(1, 8) if other != small
             for rest in product(*(could_be(n) for n in others.values()))
             if published_summary({"people_excluded": (alt := {**dict(zip(others, rest, strict=True)),
                                                                rule: other}),
                                   "resources_withheld": alt}) == seen]
    assert alike, f"{rule}={small} is the only value that shows {seen}"
