"""Benchmarks: ``tidings bench WORKLOAD --json`` runs one workload against tidings alone.

Load generators are lean raw picows clients with pre-encoded frames, pinned to a
different core than the server, so a figure measures the server, not the client.
"""
