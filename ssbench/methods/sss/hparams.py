"""SSS's hyper-parameters, each with the source it follows.

Sources: "paper" = Zhu et al. 2025 (arXiv 2506.08949); "SSS README" = the commands in AIGeeksGroup/SSS (its only
released content: README and figures); "MedSAM-2" = SuperMedIntel/Medical-SAM2, the framework the paper builds on
(cfg.py, func_3d/function.py, func_3d/dataset/btcv.py, train_3d.py); "SAM-2" = the ``sam2`` 1.1.0 distribution
(its configs and ``training/``); "V2" = UniMatch V2 (LiheYoung/UniMatch-V2, unimatch_v2.py, model/semseg/dpt.py);
"ssbench" = our own choice where none of them says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field


@dataclass(frozen=True)
class SSSConfig:
    # --- SAM-2 (the input size is data.train_size: 1024 published, as SAM-2 and the SSS README's -image_size) ---
    model: str = "sam2_hiera_s"  # paper / SSS README: Hiera-S (-sam_config sam2_hiera_s, sam2_hiera_small.pt)
    checkpoint: str | None = None  # an official SAM-2 checkpoint file; None: the cache folder, else download
    # paper: pretrained SAM-2. The effective initialisation is recorded: on the embedded phantom without a checkpoint
    # a run falls back to random (loudly), and its config says random, with its own hash and folder (sss@init=random)
    init: Literal["pretrained", "random"] = "pretrained"
    # SHA-256 of the checkpoint file a pretrained run loads: resolved and recorded by ssbench (part of the config
    # hash, not of the folder name); set it to require exactly that file
    checkpoint_sha256: str | None = None
    cache_dir: str | None = None  # ssbench: default ~/.cache/ssbench/sam2 (or $SSBENCH_CACHE/sam2)

    # --- volumes as sequences ---
    # MedSAM-2 (the paper's framework): a volume is a sequence; the prompt goes on one slice and SAM-2's memory
    # carries it through the others, forward and backward. false: the per-slice image-mode ablation (ssbench).
    memory: bool = True
    # SAM-2 (sam2.1 training config: num_frames 8): labeled training clips of 8 consecutive slices (fewer when the
    # volume has fewer), a box on the first. 8 is the shortest clip whose last slice reads every memory slot that
    # evaluation reads (the prompt and 6 propagated slices: num_maskmem 7). MedSAM-2 trains 2-slice clips
    # (cfg.py -video_length 2) with its memory modules at lr 1e-8 (train_3d.py): trained memory is used instead.
    clip_length: Annotated[int, Field(ge=1)] = 8
    # both: each clip runs up or down the volume with p 0.5, as evaluation propagates from the prompt both ways
    # (SAM-2's sampler option reverse_time_prob; the probability: ssbench); forward: increasing slice order only
    clip_directions: Literal["both", "forward"] = "both"
    # A class absent from a clip's first slice is not tracked (MedSAM-2 tracks only the prompted frame's objects).
    # true: it gets a decoy box there (its box on the nearest slice holding it, else a random box) and presence
    # target 0 on that slice (SAM-2 training/loss_fns.py: absent -> object score 0, no mask loss), so that "not
    # here" is learnt under a prompt (ssbench); false: it is not prompted at all (MedSAM-2)
    absent_prompts: bool = True
    # holding: a clip starts on a slice that holds some class (a drawn slice without one is replaced by one drawn
    # uniformly among those that do: MedSAM-2 skips clips without objects; BHSD's slices mostly hold none); any: the
    # drawn slice. ACDC, every slice of which holds a class, is the same under both.
    clip_start: Literal["holding", "any"] = "holding"
    # SAM-2 (sam2.1 training config: max_num_objects 3): at most this many classes tracked per clip, drawn among
    # those on its first slice; 0: all. Absent classes are decoded on the first slice only (their decoy), never
    # through the clip.
    max_objects: Annotated[int, Field(ge=0)] = 3
    # component: a training box frames the class's largest 3-D connected component crossing the prompted slice (at
    # pcsw_connectivity), as PCSW's test box frames one component (BHSD's SAH, SDH, multifocal IPH have several);
    # class: every pixel of the class on the slice (ssbench's earlier rule)
    train_box: Literal["component", "class"] = "component"
    # SAM-2 (sam2_utils.sample_box_points, its training default): each box corner moved by at most
    # min(box_noise x side, box_noise_bound px); 0: exact boxes. The bound is SAM-2's 20 px (at 1024).
    box_noise: Annotated[float, Field(ge=0)] = 0.1
    box_noise_bound: Annotated[float, Field(ge=0)] = 20.0
    # ssbench: a random decoy box's sides (x input size) for a class absent from the whole volume
    decoy_side: tuple[float, float] = (0.1, 0.5)
    point_prompt: bool = False  # MedSAM-2 3-D / SSS README: boxes (-prompt bbox); true adds a positive point
    # SAM-2's configs: a propagated slice is decoded as 3 masks and the one with the highest predicted IoU is kept;
    # training back-propagates the lowest-loss one and trains the IoU head (SAM-2 loss_fns.py). false: 1 mask
    multimask_tracking: bool = True
    # SAM-2's video predictor (build_sam2_video_predictor, apply_postprocessing; MedSAM-2 builds it so): at
    # evaluation a single mask below stability 0.98 falls back to the best of 3, and holes up to 8 low-res pixels
    # are filled in the masks returned
    postprocess: bool = True

    # --- DFE and PCSW (paper) ---
    dfe: bool = True
    dfe_mode: Literal["add", "replace"] = "add"  # paper's figure: F_adj added to the strong features; replace: fed alone
    pcsw: bool = True  # false: the largest coarse slice of each class (PCSW's own fallback) without the window search
    pcsw_threshold: float = 0.8  # paper: continuity C >= 0.8
    pcsw_connectivity: Literal[6, 26] = 6  # 6: SciPy's default (the released code); 26: what its comment says
    pcsw_prob: float = 0.5  # paper: the coarse foreground B = probability > 0.5
    # ssbench: a class is present in a volume when its coarse foreground has at least this many voxels (1: a single
    # stray pixel prompts it, as the paper's rule reads)
    presence_min_voxels: Annotated[int, Field(ge=1)] = 1
    # a class without coarse foreground: absent = never prompted, no prediction, no unlabeled signal (ssbench);
    # whole-image = prompted with the whole-image box on the middle slice (the released code's whole-image prompt;
    # the slice: ssbench), so that a class the coarse head never finds can still be predicted and taught
    empty_prompt: Literal["absent", "whole-image"] = "absent"
    refresh_batch: Annotated[int, Field(ge=1)] = 16  # ssbench: slices encoded at a time when prompts are refreshed
    pcsw_refresh: int = 500  # ssbench: iterations between re-propagations of an unlabeled volume's pseudo-label prompts
    # ssbench: the coarse head PCSW reads is trained on labeled slices (CE + Dice); false is refused (untrained, it
    # finds every class absent and the unlabeled branch never acts)
    train_coarse_head: bool = True

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
    crop_min: Annotated[int, Field(ge=1)] = 8  # ssbench: the crop's smallest side in pixels
    flip_p: Annotated[float, Field(ge=0, le=1)] = 0.5  # ssbench: probability of the weak view's left-right flip
    # V2 unimatch_v2.py:255: the best checkpoint is chosen by the student's score (the EMA model is only logged)
    evaluate: Literal["student", "teacher"] = "student"
    # the unlabeled losses' weight: 1 = the paper; 0 = SSS's labeled-only ablation (the unlabeled branch still runs
    # and is logged, but teaches nothing: benchmarks/sss_ssl_effect.py)
    unlabeled_weight: Annotated[float, Field(ge=0)] = 1.0

    # --- what trains, and how much memory the step takes (MedSAM-2 train_3d.py trains the mask decoder at 1e-4 and
    # the memory modules -- obj_ptr_proj, memory_encoder, memory_attention, mask_downsample -- at 1e-8, its image
    # and prompt encoders frozen; SAM-2 and ssbench's default: everything at train.lr) ---
    train_image_encoder: bool = True  # false: frozen (and encoded without autograd: no activations kept)
    train_prompt_encoder: bool = True
    # learning rate of the memory modules (MedSAM-2's four, with SAM-2's memory-only parameters: maskmem_tpos_enc,
    # no_mem_embed, no_mem_pos_enc, no_obj_ptr, obj_ptr_tpos_proj) and of the mask decoder, as x train.lr
    # (MedSAM-2: memory 1e-8 / 1e-4 = 1e-4, decoder 1)
    lr_scale_memory: Annotated[float, Field(ge=0)] = 1.0
    lr_scale_decoder: Annotated[float, Field(ge=0)] = 1.0
    # encoder: each image-encoder call of a training step is recomputed in backward instead of keeping its
    # activations (torch.utils.checkpoint, non-reentrant, RNG preserved); off: none
    activation_checkpointing: Literal["off", "encoder"] = "off"

    # recorded and hashed, but not part of the run folder's name (the engine's variant tag)
    resolved_fields: ClassVar[tuple[str, ...]] = ("checkpoint_sha256",)

    def __post_init__(self):
        if not self.train_coarse_head:
            raise ValueError("train_coarse_head=false is refused: PCSW prompts from the coarse head, which untrained "
                             "finds every class absent, so the unlabeled branch would never act")
