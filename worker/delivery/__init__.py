"""Delivery: drain a partition, turn a batch into CleverTap uploads, write every outcome.

``drain`` (leases, reclaim, the ticker) calls ``batches`` (one batch), which uses ``screen`` (deleted users),
``uploads`` (requests under account slots, through the one HTTP seam ``clevertap``), ``policy`` (the pure
retry/dead-letter decision) and ``outcomes`` (one MULTI per destination). ``app`` is the Celery app.
"""
