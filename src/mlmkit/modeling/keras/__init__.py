"""HF masked LMs <-> keras-hub MaskedLM, weight for weight, one module a family."""
