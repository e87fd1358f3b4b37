"""Exports that leave the site: de-identified training data for (federated) model training."""
