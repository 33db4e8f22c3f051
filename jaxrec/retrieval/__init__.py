"""Tree index over items (``tree``) and jitted beam search (``beam_search``) for tree retrieval."""
