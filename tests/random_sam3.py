"""A small randomly initialised SAM 3, built by the `sam3` package's own builder at toy sizes.

`small_sam3_builder()` swaps the builder's largest parts (the 32-block ViT, the 24-layer text
encoder, the 6-layer fusion encoder and decoder with 200 queries) for the same classes at toy
sizes; everything else (necks, tracker, heads, 1008-pixel input) is SAM 3's as published, so
`pipeline.generators.sam_family.sam3.network.build_sam3`, the checkpoint check and loading run unchanged.

Random weights make salt-and-pepper mask logits with thousands of holes, which the predictor's
CPU hole filler visits one by one in Python (minutes per image); the builder therefore turns
hole filling off, and one test checks it on a hand-made mask instead.
"""

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import sam3.model_builder as builder
from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
from sam3.model.model_misc import MultiheadAttentionWrapper
from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
from sam3.model.text_encoder_ve import VETextEncoder
from sam3.model.tokenizer_ve import SimpleTokenizer
from sam3.model.vitdet import ViT

from pipeline.generators.sam_family.sam3.network import DETECTOR_PREFIX, INTERACTIVE_PREFIX, TRACKER_PREFIX

D_MODEL = 256  # fixed across SAM 3's heads, the tracker and the necks


def _vit(compile_mode=None) -> ViT:
    return ViT(
        img_size=1008, pretrain_img_size=336, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
        norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
        global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True, use_interp_rope=True, window_size=24,
        pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
        return_interm_layers=False, bias_patch_embed=False, compile_mode=compile_mode,
    )


def _text_encoder(bpe_path: str) -> VETextEncoder:
    encoder = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=D_MODEL, width=64, heads=2, layers=1)
    for name, parameter in encoder.named_parameters():
        if name.endswith(("positional_embedding", "text_projection")):  # left uninitialised by the package
            torch.nn.init.normal_(parameter, std=0.02)
    return encoder


def _attention(batch_first: bool = False) -> MultiheadAttentionWrapper:
    return MultiheadAttentionWrapper(num_heads=2, dropout=0.0, embed_dim=D_MODEL, batch_first=batch_first)


def _fusion_encoder() -> TransformerEncoderFusion:
    layer = TransformerEncoderLayer(
        activation="relu", d_model=D_MODEL, dim_feedforward=64, dropout=0.0, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=_attention(batch_first=True), cross_attention=_attention(batch_first=True),
    )
    return TransformerEncoderFusion(
        layer=layer, num_layers=1, d_model=D_MODEL, num_feature_levels=1, frozen=False, use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )


def _fusion_decoder() -> TransformerDecoder:
    layer = TransformerDecoderLayer(
        activation="relu", d_model=D_MODEL, dim_feedforward=64, dropout=0.0, cross_attention=_attention(),
        n_heads=2, use_text_cross_attention=True,
    )
    return TransformerDecoder(
        layer=layer, num_layers=1, num_queries=12, return_intermediate=True, box_refine=True, num_o2m_queries=0,
        dac=True, boxRPB="log", d_model=D_MODEL, frozen=False, interaction_layer=None, dac_use_selfatt_ln=True,
        resolution=1008, stride=14, use_act_checkpoint=False, presence_token=True,
    )


@contextlib.contextmanager
def small_sam3_builder() -> Iterator[None]:
    """Within the block, `sam3.model_builder` builds the small SAM 3 (hole filling off, see above)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builder, "_create_vit_backbone", _vit)
        patch.setattr(builder, "_create_text_encoder", _text_encoder)
        patch.setattr(builder, "_create_transformer_encoder", _fusion_encoder)
        patch.setattr(builder, "_create_transformer_decoder", _fusion_decoder)
        patch.setattr(builder, "SAM3InteractiveImagePredictor", functools.partial(SAM3InteractiveImagePredictor, max_hole_area=0.0))
        yield


def save_as_sam3_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Write the model's weights in the published `sam3.pt` layout (detector.* and tracker.* keys)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(INTERACTIVE_PREFIX):
            state[TRACKER_PREFIX + name[len(INTERACTIVE_PREFIX):]] = tensor
        else:
            state[DETECTOR_PREFIX + name] = tensor
    torch.save({"model": state}, path)
    return path
