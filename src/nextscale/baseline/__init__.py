"""Baselines VAR is compared with: the raster-scan next-token AR transformer."""

from nextscale.baseline.raster_ar import RasterAR, RasterARConfig

__all__ = ["RasterAR", "RasterARConfig"]
