"""Loading a masked LM; the Keras weight mappings."""
