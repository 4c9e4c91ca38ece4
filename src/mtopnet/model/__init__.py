"""M-TOPnet model: blocks, task heads, the network and its loss."""
from .losses import LossWeights, multitask_loss, task_losses
from .network import ModelConfig, MTopNet, count_parameters
from .zbins import ZBinning

__all__ = ["ModelConfig", "MTopNet", "count_parameters", "LossWeights", "multitask_loss", "task_losses",
           "ZBinning"]
