"""Peer methods measured against ours: edge attribution patching (run here) and auto-circuit's
subnetwork probing (run in its own environment, see ``benchmarks.side_venv``)."""
