"""The transform: one Segment message and its destination's settings in, CleverTap records out.

Pure: no Redis, HTTP, Celery, clock, environment or logging (``now`` is passed in). Imports only core.
:func:`worker.transform.records.transform` is the entry; the other modules hold its rules.
"""
