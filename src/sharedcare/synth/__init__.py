"""The synthetic ICS: people, their care, and every source's feeds in its own format, with ground truth."""

from sharedcare.synth.generator import DEFAULT_AS_OF, SynthSummary, generate

__all__ = ["DEFAULT_AS_OF", "SynthSummary", "generate"]
