"""The job queue: SQLAlchemy models, the one state enum, and the repository that moves jobs."""
