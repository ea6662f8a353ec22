"""How much of a request body (and of a FHIR query string) the service takes: the limits, in one place,
and reading up to one.

Without a limit one unauthenticated POST of hundreds of megabytes would be held whole in a server
process (the clinicians' portal and the API share it). A body over its route's limit is refused 413
before any route runs: by its Content-Length, or, without one, as soon as the bytes read pass it.
"""

from __future__ import annotations

from starlette.requests import Request

from sharedcare.errors import SharedcareError

# Portal forms, /api JSON and OAuth requests: the largest real one, a client assertion JWT (an RS384 or
# ES384 signature and a few claims), is 1 to 2 KB; an IG officer's review note or a clinician's reason for access a
# few hundred bytes. 64 KB leaves room for any of them typed at length.
SMALL_BODY_MAX = 64 * 1024
FHIR_WRITE_MAX = 32 * 1024 * 1024  # a Bundle bigger than this belongs in a file feed or a bulk import
CONSENT_MAX = 64 * 1024  # a patient's Consent (a few provisions, nested four deep at most) is a few kilobytes
# A FHIR search's query string goes, whole, into the AuditEvent of every read it makes (TRUST AU2), allowed or
# refused: the longest real one (a patient, a few codes, dates, a paging position) is a few hundred bytes.
FHIR_QUERY_MAX = 8 * 1024


def read_by_route(method: str, path: str) -> bool:
    """Whether the route reads the body itself, after the caller's credentials, to its own limit: the FHIR
    writes (POST /fhir, a Bundle; POST /fhir/{type}; PUT /fhir/{type}/{id}, the Consent PUT among them).
    Every other body is read before any route runs, to SMALL_BODY_MAX, whatever its content type says (a
    route may parse a form whose type is written in capitals, as Starlette accepts it)."""
    if path != "/fhir" and not path.startswith("/fhir/"):
        return False
    segments = [s for s in path[len("/fhir"):].split("/") if s]
    return (method == "POST" and len(segments) <= 1) or (method == "PUT" and len(segments) == 2)


def limit_for(method: str, path: str) -> int:
    """The most accepted of a body sent to `path`: a FHIR write's Bundle, or a small body (a search's form
    too). A Consent PUT is held to CONSENT_MAX by its route, which audits the refusal (the caller is known
    there)."""
    return FHIR_WRITE_MAX if read_by_route(method, path) else SMALL_BODY_MAX


def in_words(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


def query_over(path: str, query_string: bytes) -> bool:
    """Whether a FHIR request's query string is over FHIR_QUERY_MAX: refused 414 before any route runs, so
    no caller can append an entry of any size they choose to the permanent audit log."""
    return (path == "/fhir" or path.startswith("/fhir/")) and len(query_string) > FHIR_QUERY_MAX


QUERY_TOO_LONG = (f"the query string is longer than {in_words(FHIR_QUERY_MAX)}, the most accepted here: "
                  "a search needs only a patient, a few criteria and a page position")


class BodyTooLarge(SharedcareError):
    """A body over its route's limit: answered 413, read no further."""

    def __init__(self, limit: int, hint: str = "") -> None:
        super().__init__(f"the request body is larger than {in_words(limit)}, the most accepted here{hint}")


def declared_over(request: Request, limit: int) -> bool:
    """Whether the body's Content-Length says it is over `limit` (a malformed one is refused by the server)."""
    declared = request.headers.get("content-length", "")
    return declared.isascii() and declared.isdigit() and int(declared) > limit


async def read(request: Request, limit: int, hint: str = "") -> bytes:
    """The body, read chunk by chunk, raising BodyTooLarge as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, hint)
        chunks.append(chunk)
    return b"".join(chunks)
