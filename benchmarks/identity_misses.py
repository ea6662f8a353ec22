"""Why our MPI misses the true pairs it misses on FEBRL: each missed pair read as a reviewer would.

`python benchmarks/identity.py --why FILE` runs this on FEBRL 1-4 (each in a fresh process), writes the
breakdown to FILE as JSON and prints it as tables. For every true pair the batch relink leaves in two
persons: the comparison levels and match weight the trained model gave it, what kept it apart
(`status`) and what FEBRL's generator did to the duplicate (`category`, from the raw fields, not from
our levels). Also the pairs the given-name rule holds that are in one person all the same, joined
through other records (the rule holds a pair, not a person). Since FEBRL 3 holds up to nine
duplicates of one original, one record left out accounts for many pairs, so misses are counted by
record and by true person as well: each true person our MPI splits has a largest part (ties: the one
holding the original), and every record outside it is a *held record*, read through its strongest pair
into that part.

Status, in the order `matching.cluster` decides:
- held by the given-name rule: the weight reaches the link threshold, but the given names clearly
  differ (`compare.NAME.never_link`), or neither record has one (`compare.neither_named`), so the pair
  is only reviewed;
- on the review list: the weight is between review and link;
- below review: scored, the weight under review;
- not a candidate: no blocking rule puts the two records side by side, so the pair is never scored;
- scored to link, yet apart: nothing holds the pair itself, yet clustering left it in two persons: its
  link would have joined records kept apart through a record without a given name, or one of its
  records links to two such records and is held alone (`matching._components`; on FEBRL, whose
  identifiers have no check digit, never an NHS-number split).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import jellyfish
from rich.console import Console
from rich.table import Table

from identity import febrl_set  # benchmarks/ is on the path: these run as scripts
from sharedcare.identity.compare import COMPARISONS, FUZZY, Features, features, given_keys, levels, neither_named
from sharedcare.identity.matching import cluster
from sharedcare.identity.model import LINK_THRESHOLD, REVIEW_THRESHOLD, Model

HELD = "held by the given-name rule"
REVIEW = "on the review list"
BELOW = "below review"
NOT_CANDIDATE = "not a candidate"
APART = "scored to link, yet apart"
STATUSES = (HELD, REVIEW, BELOW, NOT_CANDIDATE, APART)
HEADERS = ("held by rule", "review", "below review", "no block", "link, apart")
_SHOWN = ("given_name", "surname", "date_of_birth", "postcode", "suburb", "address_1", "soc_sec_id")


def _text(value: Any) -> str:
    return str(value).strip() if isinstance(value, str) else ""


def _keyed(a: str, b: str, edits: int = 2) -> bool:
    """A keying error: at most `edits` typed characters apart, or as alike as the model's typing-error level."""
    return jellyfish.damerau_levenshtein_distance(a, b) <= edits or jellyfish.jaro_winkler_similarity(a, b) >= FUZZY


def _name_state(mine: tuple[str, str], other: tuple[str, str], given: bool) -> str:
    """What happened to one name field between the two records: same, missing, moved (the other field's
    name is here), nickname, keyed or replaced."""
    a, b = mine
    if not a or not b:
        return "missing"
    if a == b:
        return "same"
    if a == other[1] or b == other[0]:
        return "moved"
    if given and set(given_keys([a])) & set(given_keys([b])):
        return "nickname"
    return "keyed" if _keyed(a, b) else "replaced"


def _dob_state(a: str, b: str) -> str:
    if not a or not b:
        return "missing"
    if a == b:
        return "same"
    if len(a) == len(b) == 8 and a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return "transposed"
    return "keyed" if jellyfish.damerau_levenshtein_distance(a, b) <= 2 else "replaced"


def _address_state(ra: Any, rb: Any) -> str:
    """Postcode, suburb and street (the three grains our address comparison reads, see `febrl_postcode`)."""
    parts = [(_text(ra[f]), _text(rb[f])) for f in ("postcode", "suburb", "address_1")]
    if not parts[0][0] or not parts[0][1]:
        return "missing"
    differ = [(a, b) for a, b in parts if a != b]
    if not differ:
        return "same"
    if any(not a or not b for a, b in differ):
        return "part missing" if parts[0][0] == parts[0][1] else "postcode changed"
    if all(_keyed(a, b) for a, b in differ):
        return "keyed"
    return "changed" if parts[0][0] == parts[0][1] else "postcode changed"


def _number_state(a: str, b: str) -> str:
    if not a or not b:
        return "missing"
    if a == b:
        return "same"
    return "keyed" if jellyfish.damerau_levenshtein_distance(a, b) <= 1 else "different"


def shape(ra: Any, rb: Any) -> dict[str, str]:
    """What FEBRL's generator did to each field of this pair (raw values, not our levels)."""
    names = ((_text(ra["given_name"]), _text(rb["given_name"])), (_text(ra["surname"]), _text(rb["surname"])))
    return {"given": _name_state(names[0], (names[1][0], names[1][1]), True),
            "surname": _name_state(names[1], (names[0][0], names[0][1]), False),
            "dob": _dob_state(_text(ra["date_of_birth"]), _text(rb["date_of_birth"])),
            "address": _address_state(ra, rb),
            "soc_sec_id": _number_state(_text(ra["soc_sec_id"]), _text(rb["soc_sec_id"]))}


def category(fields: dict[str, str]) -> str:
    """One headline for a pair, the first that applies: what a reviewer would name as the reason."""
    given, surname = fields["given"], fields["surname"]
    if given == "moved" and surname == "moved":
        return "names swapped"
    if "moved" in (given, surname):
        return "a name moved to the other field, the other replaced or missing"
    if given == "replaced":
        return "given name replaced"
    if surname == "replaced":
        return "surname replaced"
    if fields["dob"] == "replaced":
        return "birth date replaced"
    if sum(v == "missing" for v in fields.values()) >= 2:
        return "two or more fields missing"
    for field, state, headline in (("given", "missing", "given name missing"),
                                   ("surname", "missing", "surname missing"),
                                   ("dob", "missing", "birth date missing"),
                                   ("address", "postcode changed", "postcode changed"),
                                   ("address", "changed", "street or suburb changed"),
                                   ("given", "keyed", "given name keyed"),
                                   ("soc_sec_id", "different", "soc_sec_id different")):
        if fields[field] == state:
            return f"{headline} (one strike)" if sum(v not in ("same", "nickname") for v in fields.values()) == 1 \
                else f"{headline}, and more"
    return "keying errors only"


def candidate(a: Features, b: Features) -> bool:
    """Whether a blocking rule of `matching.BLOCKING` puts the pair side by side."""
    def same(*columns: str) -> bool:
        return all(a[c] is not None and a[c] == b[c] for c in columns)

    return (same("nhs_number") or same("dob") or bool(a["dob_transposed"] and a["dob_transposed"] == b["dob"])
            or same("given", "family") or same("family", "district") or same("given", "postcode") or same("email"))


def why(number: int) -> dict[str, Any]:
    """The batch relink on FEBRL `number`, then every missed true pair and every held record explained."""
    records, _, keys, truth, raw = febrl_set(number)
    result = cluster(records)
    model = Model(result.model)
    feats = {r.record_id: features(r) for r in records}
    reviewed = {(p.record_a, p.record_b) for p in result.review_pairs}
    members: dict[str, list[int]] = defaultdict(list)
    for r in records:
        members[truth[keys[r.record_id]]].append(r.record_id)

    def read(a: int, b: int) -> dict[str, Any]:
        a, b = min(a, b), max(a, b)
        found = levels(feats[a], feats[b])
        scored = model.score(feats[a], feats[b])  # never_link: the levels' and the given names' (element by element)
        if not candidate(feats[a], feats[b]):
            status = NOT_CANDIDATE
        elif scored.probability >= LINK_THRESHOLD:
            status = HELD if scored.never_link or neither_named(feats[a], feats[b]) else APART
        elif scored.probability >= REVIEW_THRESHOLD:
            status = REVIEW
        else:
            status = BELOW
        fields = shape(raw[a], raw[b])
        values = {f: [_text(raw[a][f]), _text(raw[b][f])] for f in _SHOWN}
        return {"records": [keys[a][1], keys[b][1]], "values": values, "status": status,
                "on_review_list": (a, b) in reviewed, "match_weight": round(scored.match_weight, 2),
                "category": category(fields), "fields": fields,
                "levels": {c.name: model.labels[c.name][found[c.name]] for c in COMPARISONS
                           if c.name not in ("sex", "phone", "email")}}

    pairs: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    split = 0
    for person, ids in members.items():
        parts: dict[int, list[int]] = defaultdict(list)
        for i in ids:
            parts[result.cluster_of[i]].append(i)
        if len(parts) == 1:
            continue
        split += 1
        pairs += [read(a, b) for a in ids for b in ids if a < b and result.cluster_of[a] != result.cluster_of[b]]
        main = max(parts.values(), key=lambda p: (len(p), any(keys[i][1].endswith("-org") for i in p)))
        for part in parts.values():
            if part is main:
                continue
            best = max((read(a, b) for a in part for b in main), key=lambda p: p["match_weight"])
            held += [{"person": person, "record": keys[i][1], "missed_pairs": len(ids) - len(part),
                      "true_cluster_size": len(ids), "through": best} for i in part]
    persons: dict[int, list[int]] = defaultdict(list)
    for r in records:
        persons[result.cluster_of[r.record_id]].append(r.record_id)
    joined_anyway = [read(a, b) for ids in persons.values() for a in ids for b in ids if a < b and
                     (pair := model.score(feats[a], feats[b])).never_link and
                     pair.probability >= REVIEW_THRESHOLD]
    return {"data": f"FEBRL {number}", "records": len(records), "people": len(members),
            "true_pairs": sum(len(ids) * (len(ids) - 1) // 2 for ids in members.values()),
            "missed_pairs": len(pairs), "people_split": split, "held_records": len(held),
            "held_pairs_in_one_person": len(joined_anyway), "held_pairs_in_one_person_examples": joined_anyway[:20],
            "model_weights": {"prior": round(model.prior_weight, 3),
                              **{c: [round(w, 3) for w in ws] for c, ws in model.weights.items()}},
            "pairs": pairs, "held": held}


def summary(found: dict[str, Any]) -> dict[str, Any]:
    """Counts by status and by category, in pairs and in held records."""
    by = {"pairs by status": Counter(p["status"] for p in found["pairs"]),
          "held records by status": Counter(h["through"]["status"] for h in found["held"])}
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    for p in found["pairs"]:
        categories[p["category"]]["pairs"] += 1
        categories[p["category"]][f"pairs {p['status']}"] += 1
    for h in found["held"]:
        categories[h["through"]["category"]]["held records"] += 1
    return {name: dict(counts) for name, counts in by.items()} | {
        "categories": {c: dict(n) for c, n in sorted(categories.items(), key=lambda kv: -kv[1]["pairs"])}}


def print_tables(results: list[dict[str, Any]], out: Console) -> None:
    for found in results:
        counts = found["summary"]
        table = Table(title=f"{found['data']}: {found['missed_pairs']} of {found['true_pairs']} true pairs missed; "
                            f"{found['people_split']} of {found['people']} people split, {found['held_records']} "
                            "records held outside their largest part; "
                            f"{found['held_pairs_in_one_person']} pairs the given-name rule holds in one person")
        table.add_column("category (what the generator did)")
        table.add_column("pairs", justify="right")
        for header in HEADERS:
            table.add_column(header, justify="right")
        table.add_column("held records", justify="right")
        for name, n in counts["categories"].items():
            table.add_row(name, str(n.get("pairs", 0)), *(str(n.get(f"pairs {s}", 0)) for s in STATUSES),
                          str(n.get("held records", 0)))
        table.add_row("all", str(found["missed_pairs"]), *(str(counts["pairs by status"].get(s, 0)) for s in STATUSES),
                      str(found["held_records"]), style="bold")
        out.print(table)
