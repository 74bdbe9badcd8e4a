"""Observability: log formatting and Prometheus metrics, the same on both routes."""
