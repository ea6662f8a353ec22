"""Which format a FHIR answer is asked in: JSON is all that is served (the CapabilityStatement's `format`).

A request that asks only for another (`_format=xml`, `Accept: application/fhir+xml`) is answered 406 with an
OperationOutcome at the door, before its credentials or any decision, and is not audited, as an over-long
query is not (414): nothing of the record was asked for in a form it could be given. `_format` overrides
`Accept`, as FHIR R4 says. `_format` naming JSON is acted on (the answer is JSON) and taken out of the
query string the routes, and so the audit, see: it asks nothing of the record, and a read takes no
parameter. The writes (which answer an OperationOutcome or a Bundle of statuses, in JSON, whatever they
were sent in) and the bulk files (NDJSON) are not negotiated here.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from sharedcare.api import bodies

JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
JSON_RANGES = JSON_FORMATS - {"json"} | {"*/*", "application/*"}


def negotiated(method: str, path: str, query_string: bytes, accept: str,
               form: bytes | None = None) -> tuple[bytes, bytes | None, str | None]:
    """The query string and the form body (a POST search's, when given) without their `_format`, and why the
    request is not acceptable (None when it is). A search POSTed as a form may carry `_format` among its
    parameters (FHIR R4 http.html: the body holds what the query string would), read by the same rule."""
    if not (path == "/fhir" or path.startswith("/fhir/")) or path.startswith("/fhir/bulk/") \
            or bodies.read_by_route(method, path):
        return query_string, form, None
    query_string, asked = _without_format(query_string)
    if form is not None:
        form, in_form = _without_format(form)
        asked += in_form
    if asked:
        wrong = [a for a in asked if a not in JSON_FORMATS]
        if wrong:
            return query_string, form, (f"_format: '{wrong[0][:60]}' is not served: answers are in JSON only "
                                        "(application/fhir+json); ask for _format=json or leave _format out")
        return query_string, form, None
    if accept.strip() and not _takes_json(accept):
        return query_string, form, (f"Accept: answers are in JSON only (application/fhir+json), which "
                                    f"'{accept[:100]}' does not accept; accept application/fhir+json, or */*")
    return query_string, form, None


def _without_format(encoded: bytes) -> tuple[bytes, list[str]]:
    """URL-encoded parameters without `_format`, and the formats it asked for (each lower-cased, its
    parameters dropped)."""
    kept: list[bytes] = []
    asked: list[str] = []
    for part in encoded.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) != "_format":
            kept.append(part)
            continue
        # a `+` left unescaped in a URL reads as a space: `_format=application/fhir+json` is meant
        asked.append(unquote_plus(value.decode("latin-1")).replace(" ", "+").split(";")[0].strip().lower())
    return (b"&".join(kept) if asked else encoded), asked


def _takes_json(accept: str) -> bool:
    """Whether an Accept header takes JSON: a media range JSON falls in, not weighted q=0."""
    for media_range in accept.split(","):
        media, *parameters = (part.strip().lower() for part in media_range.split(";"))
        weights = [value for name, _, value in (p.partition("=") for p in parameters) if name.strip() == "q"]
        try:
            weight = float(weights[0]) if weights else 1.0
        except ValueError:
            weight = 0.0
        if media in JSON_RANGES and weight > 0:
            return True
    return False
