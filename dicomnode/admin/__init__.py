"""For IT staff: the admin REST API (login, peers, rules, studies), health and metrics."""
