"""Ingest: every source format in, UK Core FHIR out, through one pipeline."""
