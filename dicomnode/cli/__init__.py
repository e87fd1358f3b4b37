"""The ``dicomnode`` command: one typer app."""
