"""Fast mode's shared-image mask decoder computes what stock `MaskDecoder` computes, prompt for prompt."""

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from pipeline.generators.sam_family.sam import segmenter as sam_segmenter
from pipeline.generators.sam_family.sam.segmenter import SamSegmenter
from pipeline.generators.sam_family.sam.shared_decoder import decode_point_prompts, decode_prompt_tokens, upscale_masks
from random_sams import photo, tiny_sam


def published_size_decoder(seed: int) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder at their published sizes (every SAM 1 model shares them), random weights."""
    torch.manual_seed(seed)
    prompts = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    with torch.no_grad():  # default init gives near-zero logits; spread the weights so masks have real boundaries
        for parameter in decoder.parameters():
            parameter.mul_(3.0)
    return prompts.eval(), decoder.eval()


def decoder_inputs(seed: int, prompt_count: int) -> tuple[MaskDecoder, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A published-size decoder and its inputs for `prompt_count` random points on random
    image features: (decoder, features, image_pe, sparse, dense)."""
    prompts, decoder = published_size_decoder(seed)
    features = torch.randn(1, 256, 64, 64)
    points = torch.rand(prompt_count, 1, 2) * 1024
    with torch.inference_mode():
        sparse, dense = prompts(points=(points, torch.ones(prompt_count, 1, dtype=torch.int)), boxes=None, masks=None)
        return decoder, features, prompts.get_dense_pe(), sparse, dense


@pytest.mark.parametrize("prompt_count", [1, 5, 16])
def test_logits_and_ious_equal_stock_decoder_at_published_size(prompt_count, one_torch_thread):
    decoder, features, image_pe, sparse, dense = decoder_inputs(seed=prompt_count, prompt_count=prompt_count)
    with torch.inference_mode():
        stock_logits, stock_ious = decoder(features, image_pe, sparse, dense, multimask_output=True)
    logits, ious = decode_point_prompts(decoder, features, image_pe, sparse, dense)
    assert logits.shape == stock_logits.shape == (prompt_count, 3, 256, 256)
    scale = float(stock_logits.abs().max())
    assert scale > 1.0  # real masks, not all-zero logits
    assert float((logits - stock_logits).abs().max()) < 1e-4 * scale
    assert float((ious - stock_ious).abs().max()) < 1e-4 * float(stock_ious.abs().max())
    assert float(((logits > 0) == (stock_logits > 0)).float().mean()) > 0.9999


def test_prompts_decoded_together_equal_prompts_decoded_alone(one_torch_thread):
    decoder, features, image_pe, sparse, dense = decoder_inputs(seed=7, prompt_count=4)
    together, _ = decode_point_prompts(decoder, features, image_pe, sparse, dense)
    alone = torch.cat([decode_point_prompts(decoder, features, image_pe, sparse[i : i + 1], dense[i : i + 1])[0] for i in range(4)])
    # Different batch sizes take other matrix-product kernels; with these amplified weights fp32
    # rounding then moves logits by up to ~2e-4 of their range (stock itself moves as much).
    assert torch.allclose(together, alone, atol=3e-4 * float(together.abs().max()))
    assert float(((together > 0) == (alone > 0)).float().mean()) > 0.9999


def test_masks_are_upscaled_for_the_chosen_prompts_only(one_torch_thread):
    decoder, features, image_pe, sparse, dense = decoder_inputs(seed=3, prompt_count=6)
    every, ious = decode_point_prompts(decoder, features, image_pe, sparse, dense)
    decoded, token_ious = decode_prompt_tokens(decoder, features, image_pe, sparse, dense)
    chosen = torch.tensor([4, 1])
    assert torch.equal(token_ious, ious)
    chosen_masks = upscale_masks(decoder, decoded, chosen)
    assert chosen_masks.shape == (2, 3, 256, 256)
    assert torch.allclose(chosen_masks, every[chosen], atol=1e-5 * float(every.abs().max()))
    assert upscale_masks(decoder, decoded, torch.tensor([], dtype=torch.long)).shape == (0, 3, 256, 256)


def test_fast_segmenter_decodes_with_the_shared_decoder_and_stays_close_to_exact(one_torch_thread):
    sam = tiny_sam()
    exact, fast = SamSegmenter(sam), SamSegmenter(sam, fast=True)
    embedding = exact.embed([photo(0, 96)])[0]
    points = torch.tensor(np.array([[10.0, 20.0], [40.0, 30.0], [90.0, 60.0]]))
    exact_logits, exact_ious = exact.predict_points(embedding, points)
    fast_logits, fast_ious = fast.predict_points(embedding, points)
    assert fast_logits.shape == exact_logits.shape == (3, 3, 16, 16)
    assert torch.allclose(fast_logits, exact_logits, atol=1e-4) and torch.allclose(fast_ious, exact_ious, atol=1e-4)
    assert not torch.equal(fast_logits, exact_logits)  # other arithmetic: fast mode really took the shared path


@pytest.mark.parametrize("prompts_upscaled_together", [1, 64])
def test_fast_candidates_are_the_predicted_iou_filter_of_all_outputs(prompts_upscaled_together, monkeypatch, one_torch_thread):
    monkeypatch.setattr(sam_segmenter, "UPSCALE_PROMPTS", prompts_upscaled_together)
    sam = tiny_sam()
    fast = SamSegmenter(sam, fast=True)
    embedding = fast.embed([photo(1, 96)])[0]
    points = torch.tensor(np.array([[10.0, 20.0], [40.0, 30.0], [90.0, 60.0], [60.0, 80.0], [5.0, 90.0]]))
    logits, ious = fast.predict_points(embedding, points)
    threshold = float(ious.max(dim=1).values.median())  # two of the five prompts keep a candidate
    kept_logits, kept_ious = fast.predict_candidates(embedding, points, threshold)
    keep = ious > threshold
    assert keep.any(dim=1).any() and not keep.any(dim=1).all()  # some prompts have survivors, some none
    assert torch.equal(kept_ious, ious[keep])
    assert torch.allclose(kept_logits, logits[keep], atol=1e-6) and kept_logits.shape == (int(keep.sum()), 16, 16)
    none_logits, none_ious = fast.predict_candidates(embedding, points, float(ious.max()))
    assert none_logits.shape == (0, 16, 16) and none_ious.shape == (0,)
