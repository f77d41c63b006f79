"""Everything the relay keeps in Redis, each structure with its module: the producer (ingest's write), the
streams and their consumer group, the retry schedule, partition leases, account upload slots, dead letters and
the suppressions of deleted users. Imports only core; key names come from :class:`worker.core.keys.Keys`.
"""
