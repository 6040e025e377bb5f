"""How well a tokenizer fits a corpus (`audit`), and adding its costliest words as whole-word
tokens (`extend`)."""
