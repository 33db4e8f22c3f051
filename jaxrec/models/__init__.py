"""jaxrec.models."""
