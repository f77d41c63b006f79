"""The HTTP ingest process: Segment's Tracking API in, partitioned Redis Streams out.

It knows nothing of CleverTap: it validates, authenticates, deduplicates and enqueues.
"""
