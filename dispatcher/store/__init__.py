"""Adapters behind the ports: Redis and memory stores, the Redis keys and scripts."""
