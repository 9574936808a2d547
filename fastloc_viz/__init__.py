"""fastloc_viz: fast object localization from a classifier, and the tools to explore it.

Rank a late conv layer's neurons by activation x gradient for a class, keep the top k (one
per channel), guided-backprop from each to the image, and combine the k maps into a
localization map and a box. Baselines (Grad-CAM, guided backprop, guided Grad-CAM) come
through Captum; every method is registered in :mod:`fastloc_viz.methods`; widgets live in
:mod:`fastloc_viz.widgets`. ``docs/architecture.md`` maps the modules.
"""

import importlib.metadata as _metadata

from .collection.boxes import boxes
from .core.results import Explanation, Neuron, Prediction
from .imaging.batch import sample_image
from .imaging.readers import ImageInfo, LoadedImage, read_image
from .methods import METHODS, Method, MethodParams, get_method, register_method, unregister_method
from .methods.combine import RULES, combine_maps, recombine, register_rule
from .methods.explain import explain
from .model.bundle import ModelBundle, load_model
from .model.classes import AmbiguousClass, UnknownClass
from .neurons.ablation import Ablation, ablate
from .neurons.atlas import NeuronAtlas

try:
    __version__ = _metadata.version("fastloc-viz")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

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
    "boxes",
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
