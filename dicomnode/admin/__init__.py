"""For IT staff: the admin API (FastAPI), the web console, the operator commands, metrics and health."""
