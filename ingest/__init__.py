"""The HTTP ingest process: Segment's Tracking API in, partitioned Redis Streams out; and the admin API.

It validates, authenticates, deduplicates and enqueues; it knows nothing of delivery (it never imports
``worker.delivery.drain`` or ``worker.cli``). Rooms: ``tracking`` (the Tracking API), ``admin`` (the operator API),
``body`` (the one bounded body reader), ``responses``, ``metrics``, ``app``.
"""
