"""Federated rounds (Flower): sites train the demonstration CT model on their own exports; only weights travel.

Needs the ``fl`` extra (torch, MONAI, onnx, ONNX Runtime) and flwr (installed without its pins, see
``scripts/setup.sh``). The network and its normalisation live in :mod:`dicomnode.fl.network`; nothing
here is imported by the node itself, and nothing here imports the repository's ``training/``.
"""
