"""jaxrec: pure-function JAX/Flax recommenders for long-tailed, streaming user activity."""

__version__ = "0.1.0"
