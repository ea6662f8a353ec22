"""sharedcare: an open, standards-based shared care record for an integrated care system."""

__version__ = "0.1.0"
