"""What every room shares: the error tree, settings, destinations, the message model, logging, key names.

Imports nothing of the project. Pure but for :mod:`worker.core.settings` (the one reader of the environment)
and :mod:`worker.core.logs` (configured once by each entry point).
"""
