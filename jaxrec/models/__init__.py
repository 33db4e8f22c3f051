"""Base recommenders (Flax Linen) and their losses; ``registry`` maps names to models."""

from jaxrec.models.registry import ModelSpec, get, names, register

__all__ = ["ModelSpec", "get", "names", "register"]
