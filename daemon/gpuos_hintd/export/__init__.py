"""Exports that take spans off the node: OTLP traces (otlp.py) and identity-labelled metrics (prom.py)."""
