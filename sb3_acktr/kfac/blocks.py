"""
Kronecker-factored curvature blocks for ``nn.Linear`` and ``nn.Conv2d``.

Conventions (see docs/modules/kfac.md, section "Conventions"):

* A layer's weight and bias form one matrix ``M`` of shape ``(out, in [+ 1])``: the bias is a homogeneous
  coordinate, so a constant 1 is appended to every activation row. For a convolution ``in = C * kh * kw``,
  ordered like ``weight.view(out, -1)`` and like the columns of ``torch.nn.functional.unfold``.
* The Fisher loss is a *sum* over the batch of per-example negative log-likelihoods, so the output
  gradients captured during the Fisher pass are per-example gradients.
* With ``B`` examples and ``T`` rows per example (output locations of a convolution, extra leading
  dimensions of a linear layer), the block of the Fisher is approximated by ``G (x) A`` (row-major
  vectorisation of ``M``) with

  - ``A = sum_rows a a^T / (B * T)`` (mean over rows) and
  - ``G = sum_rows g g^T / B`` (mean over examples of the per-example sum over its rows),

  which is KFC (Grosse & Martens, 2016) with the factor ``T`` folded into ``G``: both factors are
  independent of the batch size. The ``"reduce"`` mode (Eschenhagen et al., 2023) instead averages the
  patches of an example and sums its output gradients before taking outer products; it is exact when all
  the patches of an example are equal and needs a ``T``-times smaller product for ``A``.
* A convolution's ``A`` (expand mode) may be estimated from a random sample of its ``B * T`` patches, drawn without
  replacement, every patch equally likely: an unbiased estimate of the mean over all of them (TF K-FAC's patch
  subsampling). Its cost no longer grows with the batch, and ``G`` still comes from every example.
"""

from typing import Literal, cast

import torch as th
import torch.nn.functional as F
from torch import nn

ConvMode = Literal["expand", "reduce"]


def is_supported_layer(module: nn.Module) -> bool:
    """
    Whether K-FAC can model this layer: ``nn.Linear`` and ``nn.Conv2d`` with ``groups=1`` and zero padding.

    :param module: any module
    :return: True if a Kronecker-factored block can be built for it
    """
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


class KroneckerBlock:
    """
    Curvature statistics of one layer: computes the per-batch factors ``A`` and ``G``
    and maps gradients between the layer's parameters and the matrix ``M``.

    :param name: qualified name of the module (for messages and diagnostics)
    :param module: the ``nn.Linear`` or ``nn.Conv2d`` layer
    :param conv_mode: ``"expand"`` (KFC) or ``"reduce"`` statistics for convolutions
    :param patches_per_feature: in expand mode, estimate a convolution's ``A`` from at most this many patches per
        input feature (``C * kh * kw`` features), drawn at random from all the batch's patches; None: all of them
    """

    def __init__(
        self,
        name: str,
        module: nn.Linear | nn.Conv2d,
        conv_mode: ConvMode = "expand",
        patches_per_feature: int | None = None,
    ) -> None:
        if not is_supported_layer(module):
            raise ValueError(f"Layer '{name}' ({module}) cannot be modelled by K-FAC")
        self.name = name
        self.module = module
        self.conv_mode = conv_mode
        self.max_patches: int | None = None
        self.set_patches_per_feature(patches_per_feature)
        self.weight: th.Tensor = module.weight
        # A frozen bias is a constant of the layer, not a coordinate of the block.
        self.bias: th.Tensor | None = module.bias if module.bias is not None and module.bias.requires_grad else None

    def set_patches_per_feature(self, patches_per_feature: int | None) -> None:
        """The most patches per input feature that a convolution's ``A`` is estimated from in expand mode (None: all)."""
        self.max_patches = None
        if isinstance(self.module, nn.Conv2d) and self.conv_mode == "expand" and patches_per_feature is not None:
            self.max_patches = patches_per_feature * self.module.weight[0].numel()

    @property
    def parameters(self) -> list[th.Tensor]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def patches(self, inputs: th.Tensor) -> th.Tensor:
        """Convolution patches ``(B, C * kh * kw, T)``, columns ordered like ``weight.view(out, -1)``."""
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        padding = cast(tuple[int, int], conv.padding)  # never a string: see is_supported_layer
        return F.unfold(inputs, conv.kernel_size, conv.dilation, padding, conv.stride)

    def sampled_patches(self, inputs: th.Tensor, n_patches: int) -> th.Tensor:
        """
        ``n_patches`` of the batch's ``B * T`` convolution patches, drawn without replacement, as the rows of a
        ``(n_patches, C * kh * kw)`` matrix (columns ordered like the rows of :meth:`patches`). Only the drawn patches
        are copied.
        """
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        pad_h, pad_w = cast(tuple[int, int], conv.padding)
        batch_size, channels = inputs.shape[:2]
        height, width = self._output_size(inputs)
        if pad_h or pad_w:
            inputs = F.pad(inputs, (pad_w, pad_w, pad_h, pad_h))
        drawn = th.randperm(batch_size * height * width, device=inputs.device)[:n_patches]
        positions = drawn // (height * width), drawn // width % height, drawn % width  # example, row, column
        # A patch is C * kh runs of kw contiguous values in the channels-first input, or kh * kw runs of C values once
        # the input is channels last: worth its transposition where C >= kw (3-4x faster for AcktrCNN's deeper
        # convolutions; 2x slower for the first, 4 channels and 8 x 8 kernels), and always when it is channels last.
        if channels >= conv.kernel_size[1] or inputs.is_contiguous(memory_format=th.channels_last):
            return self._patches_channels_last(inputs, positions)
        return self._patches_channels_first(inputs, positions)

    def _patches_channels_first(self, inputs: th.Tensor, positions: tuple[th.Tensor, th.Tensor, th.Tensor]) -> th.Tensor:
        """The patches at ``positions`` (example, output row, output column) of the padded input, from its window view."""
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        (dil_h, dil_w), (kernel_h, kernel_w), (stride_h, stride_w) = conv.dilation, conv.kernel_size, conv.stride
        # A view (B, C, T_h, T_w, kh, kw) of the windows: nothing is copied until the drawn ones are gathered.
        windows = inputs.unfold(2, dil_h * (kernel_h - 1) + 1, stride_h).unfold(3, dil_w * (kernel_w - 1) + 1, stride_w)
        windows = windows[..., ::dil_h, ::dil_w]
        examples, rows, columns = positions
        return windows[examples, :, rows, columns].reshape(len(examples), -1)  # (n_patches, C, kh, kw) flattened

    def _patches_channels_last(self, inputs: th.Tensor, positions: tuple[th.Tensor, th.Tensor, th.Tensor]) -> th.Tensor:
        """The patches at ``positions`` of the padded input, gathered as rows of a channels-last copy of it."""
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        (dil_h, dil_w), (kernel_h, kernel_w), (stride_h, stride_w) = conv.dilation, conv.kernel_size, conv.stride
        _, channels, in_height, in_width = inputs.shape
        pixels = inputs.permute(0, 2, 3, 1).contiguous().view(-1, channels)  # one row per pixel
        examples, rows, columns = positions
        corners = (examples * in_height + rows * stride_h) * in_width + columns * stride_w  # each patch's first pixel
        kernel_rows = th.arange(kernel_h, device=inputs.device) * (dil_h * in_width)
        kernel_columns = th.arange(kernel_w, device=inputs.device) * dil_w
        window = (kernel_rows[:, None] + kernel_columns[None, :]).reshape(1, -1)
        patches = pixels.index_select(0, (corners[:, None] + window).reshape(-1))  # (n_patches * kh * kw, C)
        return patches.view(len(examples), kernel_h * kernel_w, channels).transpose(1, 2).reshape(len(examples), -1)

    def n_patches(self, inputs: th.Tensor) -> int:
        """``B * T``: the number of patches of a convolution's input batch."""
        height, width = self._output_size(inputs)
        return inputs.shape[0] * height * width

    def _output_size(self, inputs: th.Tensor) -> tuple[int, int]:
        """The convolution's output height and width ``(T_h, T_w)`` on ``inputs`` (before padding)."""
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        padding = cast(tuple[int, int], conv.padding)
        height, width = (
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(
                inputs.shape[2:], padding, conv.dilation, conv.kernel_size, conv.stride, strict=True
            )
        )
        return height, width

    def _samples_patches(self, inputs: th.Tensor) -> bool:
        return self.max_patches is not None and self.max_patches < self.n_patches(inputs)

    def _activation_rows(self, inputs: th.Tensor) -> th.Tensor:
        """
        The activation rows ``(rows, D [+ 1])`` of a linear layer, of a convolution in reduce mode or of the sampled
        patches, with a last column of ones when the layer has a bias (the homogeneous coordinate).
        """
        if not self.is_conv:
            source = inputs if inputs.dim() == 2 else inputs.reshape(-1, inputs.shape[-1])
        elif self.conv_mode == "reduce":
            source = self.patches(inputs).mean(dim=2)
        else:
            assert self.max_patches is not None
            source = self.sampled_patches(inputs, self.max_patches)
        return source if self.bias is None else F.pad(source, (0, 1), value=1.0)

    def _patch_columns(self, inputs: th.Tensor) -> th.Tensor:
        """Every patch of a convolution in expand mode as the columns of one ``(D [+ 1], B * T)`` matrix."""
        patches = self.patches(inputs)  # (B, D, T)
        # The (D, B, T) copy and one product beat batched products summed over the batch (1.2-4.8x on AcktrCNN's
        # layers), whose (B, D, D) result is larger than the patches themselves for deep layers.
        n_features = patches.shape[1]
        columns = patches.new_empty(n_features + int(self.bias is not None), *patches.transpose(0, 1).shape[1:])
        columns[:n_features] = patches.transpose(0, 1)
        if self.bias is not None:
            columns[n_features:] = 1.0
        return columns.reshape(columns.shape[0], -1)

    def _gradient_rows(self, output_grad: th.Tensor) -> tuple[th.Tensor, int]:
        """Rows ``g`` of per-example output gradients and the number of examples ``B``."""
        batch_size = output_grad.shape[0]
        if self.is_conv:
            if self.conv_mode == "reduce":
                return output_grad.sum(dim=(2, 3)), batch_size
            return output_grad.permute(0, 2, 3, 1).reshape(-1, output_grad.shape[1]), batch_size
        return output_grad if output_grad.dim() == 2 else output_grad.reshape(-1, output_grad.shape[-1]), batch_size

    @property
    def activation_key(self) -> tuple:
        """What ``A`` depends on besides the input: blocks with equal keys fed the same tensor have the same ``A``."""
        if not self.is_conv:
            return ("linear", self.bias is not None)
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        settings = (conv.kernel_size, conv.dilation, conv.padding, conv.stride, self.conv_mode, self.max_patches)
        return ("conv", self.bias is not None, *settings)

    def activation_outer(self, inputs: th.Tensor) -> tuple[th.Tensor, int]:
        """
        :param inputs: the layer's input for one batch
        :return: the sum of the outer products of the activation rows (with the homogeneous coordinate if biased) and
            the number of rows: ``A`` is their quotient
        """
        if self.is_conv and self.conv_mode == "expand" and not self._samples_patches(inputs):
            columns = self._patch_columns(inputs)
            return F.linear(columns, columns), columns.shape[1]  # columns @ columns.T in one operation
        # As rows: padding a row-major matrix with the ones is cheaper than padding its transpose.
        rows = self._activation_rows(inputs)
        return th.mm(rows.T, rows), rows.shape[0]

    def gradient_outer(self, output_grad: th.Tensor) -> tuple[th.Tensor, int]:
        """
        :param output_grad: per-example gradients of the Fisher loss with respect to the layer's output
        :return: the sum of the outer products of the gradient rows and the number of examples: ``G`` is their quotient
        """
        rows, batch_size = self._gradient_rows(output_grad)
        return rows.T @ rows, batch_size

    def activation_factor(self, inputs: th.Tensor) -> th.Tensor:
        """
        :param inputs: the layer's input for one batch
        :return: ``A``, the mean outer product of the activation rows (with the homogeneous coordinate if biased)
        """
        outer, n_rows = self.activation_outer(inputs)
        return outer / n_rows

    def gradient_factor(self, output_grad: th.Tensor) -> th.Tensor:
        """
        :param output_grad: per-example gradients of the Fisher loss with respect to the layer's output
        :return: ``G``, the per-example outer product of the output gradients, averaged over examples
        """
        outer, batch_size = self.gradient_outer(output_grad)
        return outer / batch_size

    def gradient_matrix(self) -> th.Tensor | None:
        """The gradient as the matrix ``M`` of shape ``(out, in [+ 1])``, or None when the weight has no gradient."""
        if self.weight.grad is None:
            return None
        grad = self.weight.grad if self.weight.dim() == 2 else self.weight.grad.reshape(self.weight.shape[0], -1)
        if self.bias is not None:
            bias_grad = self.bias.grad if self.bias.grad is not None else th.zeros_like(self.bias)
            grad = th.column_stack([grad, bias_grad])
        return grad

    def split_matrix(self, matrix: th.Tensor) -> list[th.Tensor]:
        """Inverse of :meth:`gradient_matrix`: one tensor per parameter, shaped like it."""
        weight = matrix if self.bias is None else matrix[:, :-1]
        if self.weight.dim() != 2:  # a convolution's (out, C, kh, kw); a linear layer's is already shaped
            weight = weight.reshape(self.weight.shape)
        return [weight] if self.bias is None else [weight, matrix[:, -1]]
