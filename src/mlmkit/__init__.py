"""mlmkit: adapt a masked language model to your text, measure it, and fill in masks."""

from .config import EvalConfig, MlmkitError, TrainConfig
from .evaluate import Metrics, evaluate, run_eval
from .fill import FillMask
from .run import Run, TrainResult, TrainState, train

__version__ = "0.1.0"
__all__ = ["EvalConfig", "FillMask", "Metrics", "MlmkitError", "Run", "TrainConfig",
           "TrainResult", "TrainState", "evaluate", "run_eval", "train", "__version__"]
