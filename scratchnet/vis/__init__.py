"""The paper's visualisations (Simonyan, Vedaldi & Zisserman 2013), for any ``Network``.

    classmodel  class model visualisation: argmax_I S_c(I) - lam ||I||^2 by gradient ascent (section 2)
    saliency    image-specific class saliency: max over colour channels of |dS_c/dI| (section 3), 10-crop maps
    deconv      DeconvNet reconstruction from one neuron, and its relation to the gradient (section 4)
    report      ``scratchnet demo``: an HTML page that reproduces the paper's figures
    display     between photos and the network input space (mean added back, percentile stretch)

    from scratchnet.vis import saliency, class_model, reconstruct
    s = saliency.saliency(net, x)                 # s.maps (N, H, W), s.classes (top-1)
    cm = class_model(net, [99, 9])                # cm.images (2, H, W, 3) uint8, cm.scores per step
    r = reconstruct(net, x, "fire5", rule="deconvnet")

(``vis.saliency`` is the module; its function of the same name computes the maps.)
"""
from . import classmodel, deconv, display, saliency
from .classmodel import ClassModel, class_model, objective_value
from .deconv import (Reconstruction, backward_from, compare_rules, forward_to, gradient_check,
                     reconstruct, reference_backward)
from .display import prepare_image, prepare_pixels, stretch, to_pixels
from .saliency import Saliency, class_gradient, saliency_from_gradient, ten_crop_saliency

__all__ = ["classmodel", "deconv", "display", "saliency", "ClassModel", "class_model", "objective_value",
           "Reconstruction", "backward_from", "compare_rules", "forward_to", "gradient_check", "reconstruct",
           "reference_backward", "prepare_image", "prepare_pixels", "stretch", "to_pixels", "Saliency",
           "class_gradient", "saliency_from_gradient", "ten_crop_saliency"]
