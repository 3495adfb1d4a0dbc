"""Weakly supervised localisation (Simonyan et al. 2013, section 3.2), independent of the network.

Everything works on an image (H, W, 3) uint8 RGB and a saliency map (H, W) float:

    from scratchnet import localise
    seg = localise.segment(image, saliency)          # GMM colour models + graph cut + largest component
    seg.mask, seg.component, seg.box                 # box = (x0, y0, x1, y1), inclusive pixels
    localise.iou(seg.box, gt_box) >= 0.5             # the ILSVRC criterion (with the right class)
    localise.evaluate([LocRecord(...), ...])         # top-1/top-5/GT-known localisation errors

Modules: gmm (EM), graphcut (seeds, energy, max-flow), boxes (IoU, baselines, connected components),
evaluate (ILSVRC evaluation, Oxford-pets mask IoU); network (the network side: saliency maps for
localisation, localise_image) and cli (`scratchnet localise`, `scratchnet evaluate`).
``localise.evaluate`` is the function (imported over the module's name); the module is
``sys.modules["scratchnet.localise.evaluate"]``, or ``from scratchnet.localise.evaluate import LocRecord``.
"""
from .boxes import (box_area, centre_box, connected_components, iou, is_correct, largest_component,
                    localisation_error, mask_box, resize_box, saliency_threshold_box, whole_image_box)
from .evaluate import (METHODS, LocRecord, PetImage, choose_fractions, evaluate, load_oxford_pets,
                       mask_iou_trimap)
from .gmm import GMM, fit as fit_gmm
from .graphcut import (DEFAULT_PAIRWISE_WEIGHT, Segmentation, min_cut, pairwise_weights,
                       seeds_from_saliency, segment)

__all__ = [
    "segment", "Segmentation", "DEFAULT_PAIRWISE_WEIGHT", "seeds_from_saliency", "pairwise_weights",
    "min_cut", "GMM", "fit_gmm", "iou", "box_area", "is_correct", "localisation_error",
    "whole_image_box", "centre_box", "resize_box", "mask_box", "saliency_threshold_box", "connected_components",
    "largest_component", "evaluate", "choose_fractions", "LocRecord", "METHODS", "mask_iou_trimap",
    "PetImage", "load_oxford_pets",
]
