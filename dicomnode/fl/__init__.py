"""Federated rounds (Flower): sites train the demonstration CT model on their own exports; only weights travel.

Needs the ``fl`` extra (flwr) and the repository's ``training/`` package (the network and its
normalisation); nothing here is imported by the node itself.
"""
