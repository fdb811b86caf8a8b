"""The model: base models, the OneGen wrapper, the joint loss and its cross-worker gather, the training loop."""
