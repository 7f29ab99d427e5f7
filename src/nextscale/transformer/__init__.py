"""Class-conditional next-scale prediction transformer."""

from nextscale.transformer.var import VAR, VARConfig

__all__ = ["VAR", "VARConfig"]
