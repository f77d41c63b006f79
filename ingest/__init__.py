"""The HTTP ingest process: Segment's Tracking API in, partitioned Redis Streams out; and the admin API.

It validates, authenticates, deduplicates and enqueues; it knows nothing of delivery (it never imports
``worker.delivery``, ``worker.sandbox`` or ``worker.cli``). Rooms: ``tracking`` (the Tracking API), ``admin``
(the operator API), ``body`` (the one bounded body reader and the nesting bound), ``cors``, ``connections``
(uvicorn's connection limits), ``responses``, ``metrics``, ``app``.
"""
