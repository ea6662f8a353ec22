"""Bulk Data export for secondary use: jobs, files, the CLI and API share this code path."""
