"""fastloc_viz: fast object localization from a classifier, and the tools to explore it.

Rank a late conv layer's neurons by activation x gradient for a class, keep the top k (one
per channel), guided-backprop from each to the image, and combine the k maps into a
localization map and a box. Baselines (Grad-CAM, guided backprop, guided Grad-CAM) come
through Captum; widgets live in :mod:`fastloc_viz.widgets`.
"""

from .explain import METHODS, explain
from .explanation import Explanation, Neuron, Prediction
from .fastloc import recombine
from .images import sample_image
from .models import ModelBundle, load_model
from .readers import ImageInfo, LoadedImage, read_image

__version__ = "0.1.0"
__all__ = [
    "METHODS",
    "Explanation",
    "ImageInfo",
    "LoadedImage",
    "ModelBundle",
    "Neuron",
    "Prediction",
    "explain",
    "load_model",
    "read_image",
    "recombine",
    "sample_image",
    "__version__",
]
