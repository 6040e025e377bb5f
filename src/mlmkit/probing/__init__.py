"""Probes of what adapting changed: minimal pairs (BLiMP), cloze facts (LAMA) and bias pairs
(CrowS-Pairs), one model or a base and its tuned versions side by side."""
