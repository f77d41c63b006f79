"""The relay's rooms, each a subpackage with one-way imports (``pyproject.toml`` holds the contracts)::

    core       errors, settings, destinations, the message model, logs, every Redis key name (pure)
    transform  the pure Segment -> CleverTap mapping                      (imports only core)
    store      everything kept in Redis: producer, streams, retries, leases, slots, dead letters, suppressions
    delivery   drain, batches, uploads, outcomes, policy, the CleverTap seam, metrics, the Celery app
    ops        operator operations: dead letters, users, status, preview (never imports delivery)
    sandbox    the CleverTap sandbox                                      (imports nothing of the relay)
    cli        the ``ctrelay`` commands                                  (nothing imports it)

Importing a package imports nothing else: each module pulls in only what it needs.
"""
