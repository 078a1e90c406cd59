"""SSS's hyper-parameters, each with the source it follows.

Sources: "paper" = Zhu et al. 2025 (arXiv 2506.08949); "SSS README" = the commands in AIGeeksGroup/SSS (its only
released content: README and figures); "MedSAM-2" = SuperMedIntel/Medical-SAM2, the framework the paper builds on
(cfg.py, func_3d/function.py, func_3d/dataset/btcv.py, train_3d.py); "SAM-2" = the ``sam2`` 1.1.0 distribution
(its configs and ``training/``); "V2" = UniMatch V2 (LiheYoung/UniMatch-V2, unimatch_v2.py, model/semseg/dpt.py);
"ssbench" = our own choice where none of them says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SSSConfig:
    # --- SAM-2 (the input size is data.train_size: 1024 published, as SAM-2 and the SSS README's -image_size) ---
    model: str = "sam2_hiera_s"  # paper / SSS README: Hiera-S (-sam_config sam2_hiera_s, sam2_hiera_small.pt)
    checkpoint: str | None = None  # an official SAM-2 checkpoint file; None: the cache folder, else download
    init: Literal["pretrained", "random"] = "pretrained"  # paper: pretrained SAM-2; random: ssbench's CPU smoke runs
    cache_dir: str | None = None  # ssbench: default ~/.cache/ssbench/sam2 (or $SSBENCH_CACHE/sam2)

    # --- volumes as sequences ---
    # MedSAM-2 (the paper's framework): a volume is a sequence; the prompt goes on one slice and SAM-2's memory
    # carries it through the others, forward and backward. false: the per-slice image-mode ablation (ssbench).
    memory: bool = True
    # MedSAM-2 cfg.py:23 (-video_length 2) with cfg.py:12 / SSS README (-prompt_freq 2): labeled training clips of
    # 2 consecutive slices, a box on the first (func_3d/function.py:86); memory=false trains on single slices.
    clip_length: int = 2
    # SAM-2 training/loss_fns.py:245-291: an object absent from a frame has object-score target 0 and no mask
    # loss. ssbench: every class is prompted on the clip's first slice; one absent there gets a decoy box (its box
    # on the nearest slice holding it, else a random box) so that "not here" is learnt under a prompt.
    absent_prompts: bool = True
    point_prompt: bool = False  # MedSAM-2 3-D / SSS README: boxes (-prompt bbox); true adds a positive point

    # --- DFE and PCSW (paper) ---
    dfe: bool = True
    dfe_mode: Literal["add", "replace"] = "add"  # paper's figure: F_adj added to the strong features; replace: fed alone
    pcsw: bool = True  # false: the largest coarse slice of each class (PCSW's own fallback) without the window search
    pcsw_threshold: float = 0.8  # paper: continuity C >= 0.8
    pcsw_connectivity: Literal[6, 26] = 6  # 6: SciPy's default (the released code); 26: what its comment says
    pcsw_refresh: int = 500  # ssbench: iterations between re-propagations of an unlabeled volume's pseudo-label prompts
    train_coarse_head: bool = True  # ssbench: the coarse head PCSW reads is trained on labeled slices (CE + Dice)

    # --- weak-to-strong consistency ---
    teacher: Literal["unimatch-v2", "released"] = "unimatch-v2"  # V2's recipe; released: own weak prediction, L = Lx + Lu
    ema_decay: float = 0.996  # V2 unimatch_v2.py:221: alpha = min(1 - 1/(it + 1), 0.996)
    conf_thresh: float = 0.95  # V2 configs: conf_thresh 0.95 (pixels, and here also the teacher's presence)
    complementary_dropout: bool = True  # V2 dpt.py:148-161: on every feature level, half of the pairs undropped
    jitter: tuple[float, float] = (0.4, 0.4)  # paper: brightness, contrast of the strong colour jitter (p 0.8)
    # off: no CutMix (the issue reports the released code applies none; a pasted patch can hide or insert the
    # prompted structure). ignore-pasted: V2's CutMix from the reversed batch, pasted pixels left out of the loss.
    cutmix: Literal["off", "ignore-pasted"] = "off"
    cutmix_p: float = 0.5  # V2 semi.py: obtain_cutmix_box(p=0.5), with cutmix = ignore-pasted
    crop_scale: tuple[float, float] = (0.7, 1.0)  # paper: weak = crop, resize, flip; the crop's area range: ssbench
    # V2 unimatch_v2.py:255: the best checkpoint is chosen by the student's score (the EMA model is only logged)
    evaluate: Literal["student", "teacher"] = "student"
