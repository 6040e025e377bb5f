"""Batch jobs on Ray Data over the inference engines."""
