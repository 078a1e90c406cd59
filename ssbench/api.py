"""The public API for plugin authors: everything a third-party method or dataset needs, importable from here.

Stable under the Method API version (``API_VERSION``): names are added, never changed or removed, within one
version. docs/plugins.md documents each of them.

Methods (``ssbench.methods`` entry points)
    Method, MethodContext, Batch, StepInfo, API_VERSION     the contract (see ssbench/methods/api.py)
    Stage                                                    one stage of a method that trains in stages (BCP's
                                                             pre-train, then self-training)
    UNet, UNetConfig, decode_with_fp                         the literature's UNet; encode/decode and UniMatch's
                                                             feature perturbation (Dropout2d on every level);
                                                             UNet(aux_heads=True) = SSL4MIS unet_urpc,
                                                             UNet(aux_decoders=3) = unet_cct, decode_levels
    feature_noise, feature_dropout, complementary_masks      SSL4MIS's feature perturbations (URPC, CCT) and
                                                             UniMatch V2's complementary channel dropout
    ce_dice_loss, dice_loss                                  (CE + Dice)/2 and the Dice loss with an ignore mask
    strong_view, color_jitter, gaussian_blur,                UniMatch's strong augmentations and CutMix boxes
    cutmix_box, cutmix_boxes
    ema_update, ema_alpha, freeze                            an EMA teacher (Mean Teacher, UniMatch V2)
    sigmoid_rampup                                           the consistency ramp-up of the recipes
    largest_component_per_class                              BCP's largest-connected-component pseudo-labels
    HostSyncRecorder                                         proves a training step free of host synchronisations
                                                             on CPU (run it on the ``meta`` device)
Datasets (``ssbench.datasets`` entry points)
    Dataset, Case, Split, NoOptions, minmax                  the dataset contract (see ssbench/datasets/base.py)
    labeled_count, seeded_order, holdout, draw_labeled      split helpers: "P%" / "N" / "all", a fixed val/test
                                                             draw, a seeded labeled draw
    read_nifti, write_nifti                                  NIfTI as (D, H, W) with spacing, checked (and written)
Errors
    UserError, ConfigError, DataError                        one line, exit code 2, no traceback
"""

from ssbench.datasets.base import Case, Dataset, NoOptions, Split, minmax
from ssbench.datasets.nifti import read_nifti, write_nifti
from ssbench.engine.hostsync import HostSyncRecorder
from ssbench.errors import ConfigError, DataError, UserError
from ssbench.methods.api import API_VERSION, Batch, Method, MethodContext, Stage, StepInfo
from ssbench.methods.blocks.ema import ema_alpha, ema_update, freeze
from ssbench.methods.blocks.losses import ce_dice_loss, dice_loss
from ssbench.methods.blocks.perturb import complementary_masks, feature_dropout, feature_noise
from ssbench.methods.blocks.postprocess import largest_component_per_class
from ssbench.methods.blocks.ramps import sigmoid_rampup
from ssbench.methods.blocks.strong import color_jitter, cutmix_box, cutmix_boxes, gaussian_blur, strong_view
from ssbench.methods.blocks.unet import UNet, UNetConfig
from ssbench.methods.unimatch import decode_with_fp
from ssbench.splits import draw_labeled, holdout, labeled_count, seeded_order

__all__ = [
    "API_VERSION", "Method", "MethodContext", "Batch", "StepInfo", "Stage", "largest_component_per_class",
    "UNet", "UNetConfig", "decode_with_fp", "feature_noise", "feature_dropout", "complementary_masks",
    "ce_dice_loss", "dice_loss",
    "strong_view", "color_jitter", "gaussian_blur", "cutmix_box", "cutmix_boxes",
    "ema_update", "ema_alpha", "freeze", "sigmoid_rampup", "HostSyncRecorder",
    "Dataset", "Case", "Split", "NoOptions", "minmax", "labeled_count", "seeded_order", "holdout",
    "draw_labeled", "read_nifti", "write_nifti",
    "UserError", "ConfigError", "DataError",
]
