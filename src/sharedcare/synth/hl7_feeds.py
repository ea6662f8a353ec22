"""HL7 v2.4 feeds from the acute trust: the PAS's ADT messages and the laboratory's ORU^R01 results.

Segments end with a carriage return and each message is followed by a newline, as file-based
interfaces usually write them; MSH-18 declares ISO 8859-1 and the files are encoded so. Text is
escaped with HL7's escape sequences (\\T\\ for &, and so on). PAS surnames are in capitals, as many
PAS systems send them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, time
from itertools import groupby
from zoneinfo import ZoneInfo

from sharedcare.synth import codes
from sharedcare.synth.clinical import Admission, Result
from sharedcare.synth.noise import Demographics
from sharedcare.synth.people import Address, Person

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"), ("\n", "\\.br\\"))
_SEX = {"male": "M", "female": "F"}
_PANELS = {  # result code -> (panel code, panel name)
    **{t.code: ("UE", "Urea and electrolytes") for t in codes.RENAL_PANEL},
    **{t.code: ("FBC", "Full blood count") for t in codes.BLOOD_COUNT},
    codes.CRP.code: ("CRP", "C reactive protein"),
    codes.HBA1C.code: ("HBA1C", "Haemoglobin A1c"),
}
_NOTES = {
    codes.POTASSIUM.code: "Sample slightly haemolysed; potassium may be falsely raised & a repeat is advised.",
    codes.EGFR.code: "eGFR by CKD-EPI; not valid in acute kidney injury & pregnancy.",
}


def escape(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


UK = ZoneInfo("Europe/London")


def ts(when: datetime) -> str:
    """HL7 v2 timestamps carry no zone: NHS systems write UK local time."""
    return when.astimezone(UK).strftime("%Y%m%d%H%M%S")


def segment(*fields: str) -> str:
    return "|".join(fields)


def message(segments: Sequence[str]) -> str:
    return "\r".join(segments) + "\r\n"


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _range(low: float | None, high: float | None, decimals: int) -> str:
    if low is not None and high is not None:
        return f"{_number(low, decimals)}-{_number(high, decimals)}"
    if low is not None:
        return f">{_number(low, decimals)}"
    return f"<{_number(high, decimals)}" if high is not None else ""


def _doctor(name: str) -> str:
    """An XCN for a consultant written like 'Prof. Ian Rowe'."""
    title, given, family = name.split(" ", 2) if name.count(" ") >= 2 else ("", *name.split(" ", 1))
    return f"^{escape(family.upper())}^{escape(given)}^^^{escape(title)}"


class Hl7Feed:
    """Renders one person's hospital stays as PAS (ADT) and lab (ORU) messages."""

    def __init__(self, org: str, org_names: dict[str, str], counts: dict[str, Counter[str]]) -> None:
        self.org = org
        self.org_names = org_names
        self.counts = counts

    def _msh(self, app: str, when: datetime, kind: str, control_id: str) -> str:
        structure = {"A03": "ADT_A03", "R01": "ORU_R01"}.get(kind.split("^")[1], "ADT_A01")
        self.counts.setdefault(self.org, Counter())[kind] += 1
        return segment("MSH", "^~\\&", app, self.org, "SHAREDCARE", "QRD", ts(when), "", f"{kind}^{structure}",
                       control_id, "P", "2.4", "", "", "AL", "NE", "GBR", "8859/1")

    def _pid(self, person: Person, view: Demographics, mrn: str, address: Address) -> str:
        ids = f"{escape(mrn)}^^^{self.org}^MR" + (f"~{view.nhs_number}^^^NHS^NH" if view.nhs_number else "")
        name = f"{escape(view.family.upper())}^{escape(view.given)}^{escape(view.middle)}^^{escape(view.title)}"
        where = f"{escape(address.line)}^^{escape(address.town)}^^{address.postcode}^GBR^H"
        phones = "~".join(f"{number}^PRN^{kind}" for number, kind in ((person.home_phone, "PH"),
                                                                       (person.mobile, "CP")) if number)
        return segment("PID", "1", "", ids, "", name, "", view.birth_date.strftime("%Y%m%d"),
                       _SEX.get(view.sex, "U"), "", "", where, "", phones)

    def _pd1(self, person: Person) -> str:
        return segment("PD1", "", "", f"{escape(self.org_names.get(person.practice, ''))}^^{person.practice}")

    def _nk1(self, person: Person) -> list[str]:
        kin = person.next_of_kin
        if kin is None:
            return []
        rel = kin.relationship
        return [segment("NK1", "1", f"{escape(kin.family.upper())}^{escape(kin.given)}^^^{escape(kin.title)}",
                        f"{rel.hl7_code}^{rel.label}^HL70063", "", kin.phone, "", "N^Next-of-Kin^HL70131")]

    def _pv1(self, stay: Admission | None, visit: str, discharged: bool) -> str:
        fields = ["PV1", "1", "N"] + [""] * 43
        if stay:
            fields[2] = "I"
            fields[3] = f"{escape(stay.ward)}^^^{self.org}"
            fields[7] = _doctor(stay.consultant)
            fields[10] = "SUR" if stay.reason == codes.APPENDICITIS else "MED"
            fields[19] = visit
            fields[44] = ts(stay.admitted)
            if discharged:
                fields[36] = "01"
                fields[45] = ts(stay.discharged)
        return segment(*fields)

    def adt(self, person: Person, view: Demographics, stays: list[Admission], moved: datetime | None) -> list[str]:
        """A01 and A03 for each stay, and an A08 when the person told the PAS of a new address."""
        events: list[tuple[datetime, str, Admission | None]] = []
        for each in stays:
            events += [(each.admitted, "A01", each), (each.discharged, "A03", each)]
        if moved:
            events.append((moved, "A08", None))
        messages = []
        for seq, (when, event, stay) in enumerate(sorted(events, key=lambda e: e[0]), start=1):
            mrn = stay.mrn if stay else stays[-1].mrn
            visit = f"V{person.number:07d}{stays.index(stay) + 1:02d}" if stay else ""
            segments = [self._msh("PAS", when, f"ADT^{event}", f"PAS{person.number:07d}{seq:03d}"),
                        segment("EVN", event, ts(when)),
                        self._pid(person, view, mrn, person.address_on(when.date())), self._pd1(person),
                        *self._nk1(person), self._pv1(stay, visit, event == "A03")]
            messages.append(message(segments))
        return messages

    def results(self, person: Person, view: Demographics, stays: list[Admission], notes: Sequence[bool]) -> list[str]:
        """One ORU^R01 per panel per blood draw; `notes` says, draw by draw, whether the lab adds comments."""
        messages = []
        seq = 0
        draws = [(stay, draw) for stay in stays for draw in stay.labs]
        for (stay, draw), with_notes in zip(draws, notes, strict=True):
            ordered = sorted(draw, key=lambda r: _PANELS[r.test.code])
            for (panel, panel_name), panel_results in groupby(ordered, key=lambda r: _PANELS[r.test.code]):
                seq += 1
                taken = draw[0].at
                reported = datetime.combine(taken.date(), time(min(taken.hour + 2, 23), taken.minute),
                                            tzinfo=taken.tzinfo)
                order = f"{self.org}{person.number:07d}{seq:03d}"
                segments = [self._msh("LAB", reported, "ORU^R01", f"LAB{person.number:07d}{seq:03d}"),
                            self._pid(person, view, stay.mrn, person.address_on(taken.date())),
                            self._pv1(stay, f"V{person.number:07d}{stays.index(stay) + 1:02d}", False),
                            segment("ORC", "RE", f"P{order}", f"F{order}", "", "CM"),
                            segment("OBR", "1", f"P{order}", f"F{order}", f"{panel}^{panel_name}^L", "", "",
                                    ts(taken), *[""] * 8, _doctor(stay.consultant), *[""] * 5, ts(reported),
                                    "", "", "F")]
                for n, result in enumerate(panel_results, start=1):
                    segments.append(self._obx(n, result))
                    if with_notes and result.test.code in _NOTES:
                        segments.append(segment("NTE", str(n), "L", escape(_NOTES[result.test.code])))
                messages.append(message(segments))
        return messages

    @staticmethod
    def _obx(n: int, result: Result) -> str:
        test = result.test
        return segment("OBX", str(n), "NM", f"{test.code}^{escape(test.display)}^SCT", "",
                       _number(result.value, test.decimals), escape(test.unit),
                       _range(test.low, test.high, test.decimals), result.flag, "", "", "F", "", "",
                       ts(result.at))
