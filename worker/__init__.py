"""The relay's core: message model, queue layout, transform, delivery, dead letters, sandbox and CLI.

Importing this package imports nothing else: each module pulls in only what it needs, so that the
pure modules (``messages``, ``destinations``, ``transform``) stay free of Redis, HTTP and Celery.
"""
