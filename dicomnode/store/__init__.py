"""The durable landing zone: atomic spool files and their rows in the database."""
