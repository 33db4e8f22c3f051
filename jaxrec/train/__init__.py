"""jaxrec.train."""
