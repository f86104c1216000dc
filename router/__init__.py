"""KV-aware router: pure index/policy/tracker cores and the one NATS shell (service.py)."""
