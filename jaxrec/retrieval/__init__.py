"""jaxrec.retrieval."""
