"""HL7 v2 message syntax: a message's segments as lists of their fields' text, split with the separators
its MSH declares.

Hand-written rather than `hl7.parse` (python-hl7) for speed: python-hl7 builds a container object for
every field, repetition, component and subcomponent of a message, most of which mapping never reads, and
that was a third of HL7 ingest's CPU. Here a segment is only its fields' text; `hl7v2_map.Seg` splits
and unescapes a field when mapping first reads it. The split is python-hl7's (the whole message
stripped, the same separators and the same defaults for encoding characters a header leaves out) and
unescaping is python-hl7's own `unescape`, so every value mapping reads is the same as before (ingest of
a synthetic ICS gives identical rows). Stricter in one way: separators that are not all different, or an
MSH without a field after its encoding characters, are refused here, as MSH-2 (python-hl7 failed on
most of these with a bare IndexError or AssertionError). Fuzzed in tests/ingest/test_fuzz.py.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADERS = ("MSH", "BHS", "FHS")  # segments whose fields 1 and 2 are the separators themselves


class SyntaxProblem(ValueError):
    """The message cannot be split; `field` is the MSH field at fault (2: the separators), if any."""

    def __init__(self, reason: str, field: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Encoding:
    """The separators a message declares in MSH-1 and MSH-2.

    `separators` and `esc` are named as python-hl7's `unescape` reads them (segment, field, repetition,
    component, subcomponent)."""

    field: str
    repetition: str
    component: str
    subcomponent: str
    esc: str

    @property
    def separators(self) -> str:
        return f"\r{self.field}{self.repetition}{self.component}{self.subcomponent}"


def encoding_of(header: str) -> Encoding:
    """The separators an MSH segment declares; the encoding characters it leaves out default as in
    python-hl7 (`^~\\&`), and any beyond the fourth (2.7's truncation character) are ignored."""
    if len(header) < 4:
        raise SyntaxProblem("MSH must start with its field separator and encoding characters", 2)
    field = header[3]
    end = header.find(field, 4)
    if end < 0:
        raise SyntaxProblem("MSH must end its encoding characters (MSH-2) with the field separator", 2)
    chars = header[4:end]
    enc = Encoding(field, chars[1] if len(chars) > 1 else "~", chars[0] if chars else "^",
                   chars[3] if len(chars) > 3 else "&", chars[2] if len(chars) > 2 else "\\")
    if len(set(enc.separators)) != 5:
        raise SyntaxProblem("each separator (field, component, repetition, subcomponent) must be a different "
                            "character, and none a line end", 2)
    return enc


def split_message(text: str) -> tuple[Encoding, list[list[str]]]:
    """The message's encoding and its segments, each the list of its fields' text numbered as the
    standard does: field 0 is the segment's name, and in MSH fields 1 and 2 are the separators, so
    MSH-9 is index 9. Segments are separated by carriage returns."""
    message = text.strip()
    if not message:
        raise SyntaxProblem("it is empty")
    if message[:3] != "MSH":
        raise SyntaxProblem(f"it starts with {message[:3]}, not MSH")
    lines = message.split("\r")
    enc = encoding_of(lines[0])
    return enc, [_fields(line, enc) for line in lines]


def _fields(line: str, enc: Encoding) -> list[str]:
    if line[:3] in HEADERS and len(line) > 3:
        end = line.find(line[3], 4)
        if end >= 0:
            rest = line[end + 1:]
            return [line[:3], line[3], line[4:end], *(rest.split(enc.field) if rest else ())]
    return line.split(enc.field)
