"""fastloc_viz: fast object localization from a classifier, and the tools to explore it.

Rank a late conv layer's neurons by activation x gradient for a class, keep the top k (one
per channel), guided-backprop from each to the image, and combine the k maps into a
localization map and a box. Baselines (Grad-CAM, guided backprop, guided Grad-CAM) come
through Captum; every method is registered in :mod:`fastloc_viz.methods`; widgets live in
:mod:`fastloc_viz.widgets`. ``docs/architecture.md`` maps the modules.
"""

from .ablation import Ablation, ablate
from .classes import AmbiguousClass, UnknownClass
from .atlas import NeuronAtlas
from .combine import RULES, combine_maps, recombine, register_rule
from .explaining import explain
from .explanation import Explanation, Neuron, Prediction
from .images import sample_image
from .methods import METHODS, Method, MethodParams, get_method, register_method, unregister_method
from .models import ModelBundle, load_model
from .readers import ImageInfo, LoadedImage, read_image
from .version import __version__

__all__ = [
    "METHODS",
    "RULES",
    "Ablation",
    "AmbiguousClass",
    "Explanation",
    "ImageInfo",
    "LoadedImage",
    "Method",
    "MethodParams",
    "ModelBundle",
    "NeuronAtlas",
    "Neuron",
    "Prediction",
    "UnknownClass",
    "ablate",
    "combine_maps",
    "explain",
    "get_method",
    "load_model",
    "read_image",
    "recombine",
    "register_method",
    "register_rule",
    "sample_image",
    "unregister_method",
    "__version__",
]
