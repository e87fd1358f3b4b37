"""AI: model registry, backends, and series -> volume -> mask."""
