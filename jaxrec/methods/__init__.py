"""jaxrec.methods."""
