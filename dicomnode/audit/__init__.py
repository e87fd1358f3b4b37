"""Who did what, when: the audit trail beside every stage."""
