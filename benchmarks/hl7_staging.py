"""Staging one HL7 v2 ORU^R01 as its number of results grows: the cost per result should not grow with it.

A synthetic laboratory message (`sharedcare synth`'s first ORU) is sent with its OBX repeated 1,000 to
30,000 times (up to about the MLLP listener's 4 MB frame), and `stage_hl7` (parse, map, validate, check
for repeats) timed on each, process CPU, medians of the rounds. The figure is CPU per result and its ratio
to the 1,000-result message's, in the same process: 1 when the cost is linear.

    PYTHONPATH=src python benchmarks/hl7_staging.py var/ics/feeds/RXR/hl7v2/lab-0000.hl7 --rounds 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from sharedcare.governance.framework import load_framework
from sharedcare.ingest.hl7v2 import stage_hl7
from sharedcare.ingest.messages import RawMessage

FRAMEWORK = Path(__file__).resolve().parents[1] / "config" / "framework.yaml"
SIZES = (1_000, 10_000, 30_000)


def _message(feed: Path, results: int) -> bytes:
    """The feed's first ORU, its OBX sent `results` times (set IDs 1..n)."""
    first = next(m for m in re.split(rb"[\r\n]+(?=MSH\|)", feed.read_bytes()) if b"ORU^R01" in m[:200])
    segments = [s for s in re.split(rb"[\r\n]+", first.strip()) if s]
    obx = next(s for s in segments if s.startswith(b"OBX|"))
    fields = obx.split(b"|")
    repeated = [b"|".join([fields[0], str(i).encode(), *fields[2:]]) for i in range(1, results + 1)]
    return b"\r".join([s for s in segments if not s.startswith(b"OBX|")] + repeated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("feed", type=Path, help="a synthetic laboratory HL7 v2 file")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fw = load_framework(FRAMEWORK)
    per_result: dict[int, float] = {}
    for size in SIZES:
        payload = _message(args.feed, size)
        times = []
        for _ in range(args.rounds):
            started = time.process_time()
            staged = stage_hl7(RawMessage("bench", "message 1", payload, "hl7v2"), fw)
            times.append(time.process_time() - started)
        assert len(staged.resources) >= size  # noqa: S101 - every result was staged
        per_result[size] = statistics.median(times) / size
        print(f"{size:>6} results, {len(payload) / 1024:,.0f} KB: {statistics.median(times):.2f} s CPU, "
              f"{per_result[size] * 1e6:,.0f} us a result, x{per_result[size] / per_result[SIZES[0]]:.2f} "
              f"the {SIZES[0]:,}-result message's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
