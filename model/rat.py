"""Region-Adaptive Transform (RAT) of SegPIC and its two hot kernels.

RAT (`docs/architecture.md` §2) modulates a feature map with per-pixel, per-channel 3×3 kernels generated
from region prototypes. Its costly parts are public so they can be tested and benchmarked
against the plain formulas in `model.plain`:

- `dps_conv`: the dynamic per-pixel separable convolution. The published code unfolds the
  input into a k²× copy; here the k² shifted products are accumulated in place, forward
  and backward (a custom autograd function), so no k²× tensor is ever built or saved.
- `masked_average_pool` / `expand_prototypes`: prototypes of every region of every image
  with one `scatter_add` / one `gather` over a per-image padded (B, C, max n_b) table,
  instead of a one-hot tensor per image.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Added to each region's pixel count before dividing, exactly as the published code does.
MAP_EPSILON = 0.0005


def _tap_offsets(kernel_size: int) -> list[tuple[int, int]]:
    """(dy, dx) of each tap relative to the centre, row-major like `torch.nn.Unfold`."""
    half = kernel_size // 2
    return [(dy - half, dx - half) for dy in range(kernel_size) for dx in range(kernel_size)]


def _valid_window(offset: int, size: int) -> tuple[slice, slice]:
    """Output range whose shifted input position stays inside [0, size), and that input range."""
    start, stop = max(0, -offset), min(size, size - offset)
    return slice(start, stop), slice(start + offset, stop + offset)


def _dps_forward(u: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    height, width = u.shape[-2:]
    out = torch.zeros_like(u)
    for tap, (dy, dx) in enumerate(_tap_offsets(kernel_size)):
        out_rows, in_rows = _valid_window(dy, height)
        out_cols, in_cols = _valid_window(dx, width)
        out[..., out_rows, out_cols].addcmul_(
            kernels[:, :, tap, out_rows, out_cols], u[..., in_rows, in_cols]
        )
    return out


class _DPSConv(torch.autograd.Function):
    """Shifted multiply-accumulate; saves only its two inputs for the backward pass."""

    @staticmethod
    def forward(ctx, u: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(u, kernels)
        ctx.kernel_size = kernel_size
        return _dps_forward(u, kernels, kernel_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        u, kernels = ctx.saved_tensors
        need_u, need_kernels, _ = ctx.needs_input_grad
        height, width = u.shape[-2:]
        grad_u = torch.zeros_like(u) if need_u else None
        grad_kernels = torch.zeros_like(kernels) if need_kernels else None
        for tap, (dy, dx) in enumerate(_tap_offsets(ctx.kernel_size)):
            out_rows, in_rows = _valid_window(dy, height)
            out_cols, in_cols = _valid_window(dx, width)
            grad_window = grad_out[..., out_rows, out_cols]
            if need_kernels:
                torch.mul(
                    grad_window,
                    u[..., in_rows, in_cols],
                    out=grad_kernels[:, :, tap, out_rows, out_cols],
                )
            if need_u:
                grad_u[..., in_rows, in_cols].addcmul_(
                    kernels[:, :, tap, out_rows, out_cols], grad_window
                )
        return grad_u, grad_kernels, None


def dps_conv(u: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    """Dynamic per-pixel separable convolution (spec §2 step 3).

    u: (B, C, H, W); kernels: (B, C, k*k, H, W), tap j row-major over the k×k window.
    Returns (B, C, H, W) with o[b,c,y,x] = Σ_j K[b,c,j,y,x]·u_pad[b,c,y+dy_j,x+dx_j],
    zero padding k//2; channels never mix.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if u.dim() != 4:
        raise ValueError(f"u must be (B, C, H, W), got shape {tuple(u.shape)}")
    batch, channels, height, width = u.shape
    expected = (batch, channels, kernel_size * kernel_size, height, width)
    if tuple(kernels.shape) != expected:
        raise ValueError(f"kernels must have shape {expected}, got {tuple(kernels.shape)}")
    return _DPSConv.apply(u, kernels, kernel_size)


def region_counts(labels: Tensor) -> Tensor:
    """n_b = max label + 1 of each label map (B, h, w) int64, as a (B,) int64 tensor."""
    if labels.dim() != 3 or labels.dtype != torch.int64:
        raise ValueError(
            f"label maps must be (B, h, w) int64, got shape {tuple(labels.shape)} dtype {labels.dtype}"
        )
    if labels.numel() == 0:
        raise ValueError(f"label maps must not be empty, got shape {tuple(labels.shape)}")
    if int(labels.min()) < 0:
        raise ValueError(f"label maps must hold non-negative region ids, found {int(labels.min())}")
    return labels.flatten(1).amax(dim=1) + 1


def _valid_slots(counts: Tensor) -> Tensor:
    """(B, max n_b) bool: which slots of a per-image padded prototype table hold a region."""
    slots = torch.arange(int(counts.max()), device=counts.device)
    return slots.unsqueeze(0) < counts.unsqueeze(1)


def masked_average_pool(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Masked average pooling (spec §3) of the whole batch at once.

    features: (B, C, h, w); labels: (B, h, w) int64 at the same scale.
    Returns prototypes (Σ n_b, C), image by image and region by region, each
    Σ f / (pixel count + 0.0005) so absent labels give zero rows, and counts (B,) = n_b.
    Sums go into a padded (B, C, max n_b) table with one `scatter_add`.
    """
    if features.dim() != 4 or tuple(labels.shape) != (features.shape[0], *features.shape[2:]):
        raise ValueError(
            f"label maps {tuple(labels.shape)} do not match features {tuple(features.shape)}"
        )
    counts = region_counts(labels)
    valid = _valid_slots(counts)
    batch, channels = features.shape[:2]
    slots = valid.shape[1]
    index = labels.reshape(batch, 1, -1)
    sums = features.new_zeros(batch, channels, slots).scatter_add(
        2, index.expand(batch, channels, -1), features.reshape(batch, channels, -1)
    )
    image_offsets = torch.arange(batch, device=labels.device).view(-1, 1) * slots
    slot_of_pixel = (index.view(batch, -1) + image_offsets).view(-1)
    pixel_counts = torch.bincount(slot_of_pixel, minlength=batch * slots)
    pixel_counts = pixel_counts.view(batch, 1, slots).to(features.dtype)
    means = sums / (pixel_counts + MAP_EPSILON)
    return means.transpose(1, 2)[valid], counts


def expand_prototypes(prototypes: Tensor, counts: Tensor, labels: Tensor) -> Tensor:
    """Give each pixel its region's prototype: (Σ n_b, C) → (B, C, h, w) with one gather."""
    if prototypes.dim() != 2 or counts.shape != (labels.shape[0],):
        raise ValueError(
            f"prototypes {tuple(prototypes.shape)} / counts {tuple(counts.shape)} "
            f"do not fit label maps {tuple(labels.shape)}"
        )
    if prototypes.shape[0] != int(counts.sum()):
        raise ValueError(
            f"prototype table has {prototypes.shape[0]} rows but the images have "
            f"{int(counts.sum())} regions in all"
        )
    if bool((region_counts(labels) > counts).any()):
        raise ValueError("a label map holds a region id beyond its image's prototype count")
    valid = _valid_slots(counts)
    batch, channels = labels.shape[0], prototypes.shape[1]
    table = prototypes.new_zeros(*valid.shape, channels).masked_scatter(valid.unsqueeze(-1), prototypes)
    index = labels.reshape(batch, 1, -1).expand(batch, channels, -1)
    expanded = torch.gather(table.transpose(1, 2).contiguous(), 2, index)
    return expanded.view(batch, channels, *labels.shape[1:])


class RAT(nn.Module):
    """Region-Adaptive Transform: prototype-conditioned DPSConv plus channel attention.

    Spec §2. forward(f (B, in, h, w), prototypes, label_map=None) -> (B, in, h, w).
    Without a label map, prototypes is a (B, center_ch, g, g) grid; with a label map
    (B, h, w) int64, prototypes is the (Σ n_b, center_ch) table from `masked_average_pool`.
    """

    def __init__(self, in_ch: int, center_ch: int, k: int = 3) -> None:
        super().__init__()
        mid = in_ch
        self.kernel_size = k
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1), nn.LeakyReLU(0.1), nn.Conv2d(mid, mid, 1)
        )
        self.k_sp_gen = nn.Sequential(
            nn.Conv2d(mid + center_ch, mid, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(mid, mid, k, padding=k // 2),
            nn.LeakyReLU(0.1),
            nn.Conv2d(mid, mid * k * k, k, padding=k // 2, groups=mid),
        )
        self.k_ch_gen = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(mid, mid, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(mid, mid, 1),
            nn.Sigmoid(),
        )
        self.conv_out = nn.Conv2d(mid, in_ch, 1)

    def _expanded(self, prototypes: Tensor, label_map: Tensor | None, size: tuple[int, int]) -> Tensor:
        if label_map is None:
            return F.interpolate(prototypes, size=size, mode="nearest")
        return expand_prototypes(prototypes, region_counts(label_map), label_map)

    def forward(self, f: Tensor, prototypes: Tensor, label_map: Tensor | None = None) -> Tensor:
        batch, _, height, width = f.shape
        expanded = self._expanded(prototypes, label_map, (height, width))
        u = self.conv(f)
        kernels = self.k_sp_gen(torch.cat([u, expanded], dim=1))
        k2 = self.kernel_size * self.kernel_size
        # unflatten splits the channel dimension as a view in both layouts (channels_last included).
        o = dps_conv(u, kernels.unflatten(1, (u.shape[1], k2)), self.kernel_size)
        o = self.k_ch_gen(o) * o
        return self.conv_out(o) + f
