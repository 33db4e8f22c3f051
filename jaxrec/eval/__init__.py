"""jaxrec.eval."""
