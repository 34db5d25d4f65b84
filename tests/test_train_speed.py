"""Fast paths of the training step: bf16 autocast with float32 islands, channels_last, compile.

Each must train the same objective as plain fp32: the same loss and gradients, learning under autocast,
a heap that serves each step from the last one's pages. How close bf16's loss curve stays to fp32's over
a run is measured by `benchmarks/bench_bf16_training.py`.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from compressai.layers import GDN

from model.architectures import build_model
from model.training import speed
from model.training.crops import centre_window
from model.training.decoding import decode_image
from model.training.objective import rate_distortion, split_parameters
from pipeline.sample import sample_photo_paths
from training_runs import blocks


def photo_crops(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre crops of sample photographs in [0, 1] and block label maps of them (16-pixel regions)."""
    crops = []
    for path in sample_photo_paths()[:count]:
        pixels = decode_image(path.read_bytes(), path.name)
        crops.append(centre_window(*pixels.shape[:2], size).apply(pixels))
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    label_maps = torch.from_numpy(blocks(size * 3, size * 3)[::3, ::3].astype(np.int64)).expand(count, -1, -1)
    return images, label_maps.contiguous()


def test_bf16_autocast_keeps_entropy_models_gdn_and_likelihoods_in_float32():
    torch.manual_seed(0)
    model = build_model("segpic", N=24, M=40).train()
    assert speed.keep_float32_islands(model, "cpu") == sum(isinstance(m, GDN) for m in model.modules()) + 4
    outputs: dict[str, torch.dtype] = {}
    for name, module in model.named_modules():
        if isinstance(module, (GDN, torch.nn.Conv2d)):
            module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.dtype))
    images, label_maps = photo_crops(64, 2)
    with speed.autocast(torch.device("cpu"), True):
        output = model(images, mask=label_maps)
    gdn = {name for name, module in model.named_modules() if isinstance(module, GDN)}
    assert {outputs[name] for name in gdn} == {torch.float32}
    assert torch.bfloat16 in {dtype for name, dtype in outputs.items() if name not in gdn}
    assert {likelihoods.dtype for likelihoods in output["likelihoods"].values()} == {torch.float32}
    assert torch.isfinite(rate_distortion(output, images, 0.013).loss)


def test_bf16_training_learns_while_another_autocast_context_is_left_open():
    """SAM 3's tracking predictor enters an autocast context for good when it is built; torch
    then never clears autocast's weight cache, which froze the weights a bf16 run saw."""
    images, label_maps = photo_crops(64, 4)
    torch.manual_seed(0)
    model = build_model("segpic", N=24, M=40).train()
    speed.keep_float32_islands(model, "cpu")
    optimizer = speed.adam(split_parameters(model)[0], 1e-3)
    left_open = torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)
    left_open.__enter__()
    try:
        losses = []
        for _ in range(10):
            optimizer.zero_grad(set_to_none=True)
            with speed.autocast(torch.device("cpu"), True):
                output = model(images, mask=label_maps)
            loss = rate_distortion(output, images, 0.013).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        left_open.__exit__(None, None, None)
    assert losses[-1] < 0.5 * losses[0]


def one_step_loss_and_gradients(channels_last: bool) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    layout = speed.memory_format(channels_last)
    model = build_model("segpic", N=24, M=40).to(memory_format=layout).train()
    images, label_maps = photo_crops(64, 2)
    torch.manual_seed(1)  # the same quantisation noise in both runs
    output = model(images.contiguous(memory_format=layout), mask=label_maps)
    loss = rate_distortion(output, images, 0.013).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_channels_last_trains_the_same_network():
    loss, gradients = one_step_loss_and_gradients(channels_last=False)
    loss_cl, gradients_cl = one_step_loss_and_gradients(channels_last=True)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    assert gradients.keys() == gradients_cl.keys()
    # Rounding in the quantiser may flip for a few latents, so compare the whole gradient, not each entry.
    flat, flat_cl = (torch.cat([g.flatten() for g in grads.values()]) for grads in (gradients, gradients_cl))
    assert torch.nn.functional.cosine_similarity(flat, flat_cl, dim=0) > 0.999
    assert flat_cl.norm().item() == pytest.approx(flat.norm().item(), rel=1e-3)


@pytest.mark.slow
def test_compiled_network_trains_the_same_step():
    """Dynamo + AOTAutograd capture of a training step (9 minutes on a loaded 2-core CPU)."""
    images, label_maps = photo_crops(64, 2)
    losses = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model("segpic", N=24, M=40).train()
        network = speed.compiled(model, enabled, backend="aot_eager")
        torch.manual_seed(1)  # the same quantisation noise in both runs
        loss = rate_distortion(network(images, mask=label_maps), images, 0.013).loss
        loss.backward()
        losses.append((loss.item(), model.g_a1[0].conv_groups[0].weight.grad.norm().item()))
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-4)


def test_fused_adam_takes_the_main_and_aux_parameters():
    model = build_model("segpic", N=24, M=40)
    main, aux = split_parameters(model)
    optimizer = speed.adam(main, 1e-4)
    assert optimizer.defaults["fused"] and len(optimizer.param_groups[0]["params"]) == len(main)
    assert all(name.endswith("quantiles") for name, p in model.named_parameters() if any(p is a for a in aux))


HEAP_USE = """
import ctypes, sys
import torch
from model.training import speed

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
kept = speed.keep_freed_memory() if sys.argv[1] == "keep" else False
before = mallinfo2()
activations = torch.ones(16 << 20)  # 64 MiB, above glibc's default mmap threshold
during = mallinfo2()
del activations
after = mallinfo2()
print(kept, (during.hblkhd - before.hblkhd) >> 20, (during.arena - before.arena) >> 20, (after.fordblks - before.fordblks) >> 20)
"""


def heap_use_of_a_step(policy: str, **environment: str) -> tuple[str, int, int, int]:
    """(whether the heap is kept, MiB of a 64 MiB block served by its own mapping, MiB served from the heap,
    MiB left free in the heap once it is freed), from glibc's own accounting (`mallinfo2`), in a fresh process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")} | environment
    result = subprocess.run([sys.executable, "-c", HEAP_USE, policy], env=env, capture_output=True, text=True, check=True)
    kept, mapped, heap, free_in_heap = result.stdout.split()
    return kept, int(mapped), int(heap), int(free_in_heap)


def test_kept_heap_serves_a_steps_activations_from_the_heap_and_keeps_them_after_free():
    """What saves the page faults: the next step's 64 MiB comes from pages the heap already holds."""
    kept, mapped, heap, _ = heap_use_of_a_step("default")
    assert (kept, heap) == ("False", 0) and mapped >= 64  # a mapping of its own, unmapped (faulted in anew) each step
    kept, mapped, heap, free_in_heap = heap_use_of_a_step("keep")
    assert (kept, mapped) == ("True", 0) and heap >= 64 and free_in_heap >= 64


def test_the_heap_is_left_alone_when_the_user_tunes_malloc():
    assert heap_use_of_a_step("keep", MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"
