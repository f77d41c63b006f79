"""The CleverTap sandbox: a real HTTP server speaking CleverTap's upload and delete API, with faults.

Imports nothing of the relay, so it is an honest stand-in: ``server`` (the CleverTap calls), ``admin`` (the
``/_sandbox/*`` API), ``checks`` (per-record codes), ``faults``, ``store`` (records and counters), ``state``.
"""
