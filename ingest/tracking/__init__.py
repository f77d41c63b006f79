"""Segment's Tracking API: its own dispatch of the POSTs (``dispatch``), the request handling (``routes``), the
per-message pass (``prepare``), the gathered writes (``writes``), who is sending (``auth``), what ingest adds to a
message (``enrich``), the settings document (``projects``) and the OpenAPI description of the bodies (``openapi``)."""
