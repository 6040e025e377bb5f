"""The inference engines: fill-mask and sentence scoring."""
