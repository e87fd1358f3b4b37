"""Metrics: the node's, the models' (drift) and the reference evaluation's (prometheus_client)."""
