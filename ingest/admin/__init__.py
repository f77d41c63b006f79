"""The admin HTTP API on ingest: the operations of ``ctrelay dlq`` and ``ctrelay users`` behind one Bearer token.

Mounted by :func:`ingest.admin.mount.mount` only when ``CTRELAY_ADMIN_TOKEN`` is set; the work is done by
:mod:`worker.ops`.
"""
