"""Operator operations, shared by the CLI and the admin API: dead letters, user deletion, status, transform
previews. Never imports delivery: what an operator does goes through the store (and the pure transform).
"""
