"""From texts to training blocks: tokenize, group, cache; and masking."""
