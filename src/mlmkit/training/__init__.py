"""The training recipes (PyTorch, Keras) and their shared bookkeeping."""
