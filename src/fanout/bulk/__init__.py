"""Bulk import and export of users, devices and subscriptions (issue #25).

- ``readers``: a file (or stdin, or an HTTP body) as numbered records: CSV or NDJSON,
  gzip recognised by its magic bytes, streamed.
- ``rows``: a record checked as the API would check it (api/schemas.py, identifiers.py),
  a source's columns mapped (OneSignal's CSV export, a Firebase token list), and turned
  into the tuple COPY sends; a bad one is a ``RowError`` with the reason.
- ``load``: chunks of rows through a TEMP staging table (COPY) and one set-based
  statement per chunk, counted; the export, paged by key.
- ``writers``: the export's CSV and NDJSON, in the columns the import reads.
"""

KINDS = ("users", "devices", "subscriptions")
EXPORT_KINDS = ("devices", "subscriptions")
FORMATS = ("csv", "ndjson")

__all__ = ["EXPORT_KINDS", "FORMATS", "KINDS"]
