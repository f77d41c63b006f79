"""Segment's Tracking API: the routes, who is sending (write keys, signatures), what ingest adds to a message,
and the OpenAPI description of the bodies."""
