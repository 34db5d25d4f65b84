"""Small randomly initialised SAM-family networks and small real photos, for tests of mask generators."""

from functools import partial

import numpy as np
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.raw_mask_format import RawMasks, dense_raw_masks
from pipeline.sample import sample_photo_paths


def photo(index: int = 1, side: int = 96) -> np.ndarray:
    with Image.open(sample_photo_paths()[index]) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        return np.asarray(image)


def tiny_sam(seed: int = 0) -> Sam:
    """segment-anything's own modules at toy sizes (64 px input, 32-dim prompts), random weights."""
    torch.manual_seed(seed)
    dim, image_size, patch = 32, 64, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=patch, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, global_attn_indexes=(1,), window_size=2,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size), mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()


def records_as_raw_masks(records: list[dict], height: int, width: int) -> RawMasks:
    """Stock automatic-mask-generator records (binary `segmentation`, `predicted_iou`) as raw masks, in their order."""
    masks = np.stack([record["segmentation"] for record in records]) if records else np.zeros((0, height, width), dtype=bool)
    return dense_raw_masks(masks, predicted_ious=[record["predicted_iou"] for record in records])
