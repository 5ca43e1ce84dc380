"""Dropout masks drawn 16 random bits per element: the same dropout, with a quarter of torch's random draws on a CPU.

On a CPU, `nn.Dropout` draws its mask with `bernoulli_`, which on one thread turns one mt19937 double into each
element (torch takes an MKL path instead only on Intel CPUs). On this project's 2-core AMD EPYC the mask of one
batch of MiniLM's hidden states (16 x 28 x 384) took 1.11-1.18 ms that way and 0.24-0.55 ms this way (two runs of
benchmarks/dropout_masks.py); a profile on the Xeon, with MKL's path, still put the 32 masks of a step at 15% of
it (BENCHMARKS.md, "Levers").

Here each element is kept or dropped by one 16-bit word against a threshold, four words to each 64-bit draw of
torch's default generator (`random_` over the whole int64 range), and the factor dropout multiplies by is built by
float arithmetic on the words rather than by a comparison (`sixteen_bit_dropout_scale` says why). It is the same
Bernoulli dropout except that p is rounded to a multiple of 1/65536 (0.1 becomes 0.100006); the kept elements are
scaled by 1 / the keep probability really used, so the expectation is the input's. It seeds like any torch draw
(`torch.manual_seed`, the Trainer's seed), but its stream differs from `bernoulli_`'s: a run with it differs from a
stock run as a run with another seed would.

`training.LengthGroupedTrainer`, which the command line and the notebook train with, installs it
(RunConfig.dropout_masks, "16-bit" by default; not with --compile, whose generated code draws its own random
numbers) by swapping the class of each plain `nn.Dropout` instance (the model's and the adapter's): the module, its
`p` and every parameter name stay as they were, and a deep copy keeps it. Evaluation, p = 0 or 1, in-place dropouts
and tensors not on the CPU (CUDA's dropout is one fused kernel already) take the stock forward. Dropout that an
attention kernel applies inside itself is not a module call: for BERT-type encoders, whose attention probabilities
SDPA drops with torch's masks in its unfused math kernel (2.5 ms for one MiniLM layer's forward and backward at 28
tokens, against 1.3 ms this way: benchmarks/attention_kernels.py), head_token.py's layer forward applies it through
the attention's dropout module instead; other models' (GPT-2's under SDPA) stays torch's."""

from __future__ import annotations

import torch
from torch import nn

WORD_VALUES = 1 << 16  # a 16-bit word takes this many values; p is rounded to a multiple of its inverse


def _sixteen_bit_words(shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform int16 words of `shape`, four to each 64-bit draw of the generator."""
    numel = shape.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    return words.view(torch.int16)[:numel].view(shape)


def sixteen_bit_keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - round(p * 65536) / 65536."""
    dropped = round(p * WORD_VALUES)  # words below the threshold are dropped
    return _sixteen_bit_words(shape, generator) >= dropped - WORD_VALUES // 2


def sixteen_bit_dropout_scale(shape: torch.Size, p: float, dtype: torch.dtype = torch.float32,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """What dropout multiplies by: 0 where `sixteen_bit_keep_mask` (the same draws) drops, 1 / the keep probability
    where it keeps, in `dtype` (float32 or float64).

    Built by arithmetic on the words turned into floats, not by comparing: on a CPU a comparison that writes bools,
    and a product of floats by bools, each take several times a product of floats, and the backward would repeat
    the second. word - threshold + 1 is an integer, at least 1 where the word is kept and at most 0 where it is
    dropped, and exact in float32, so clamping it to [0, 1] gives the mask."""
    dropped = round(p * WORD_VALUES)
    scale = _sixteen_bit_words(shape, generator).to(dtype).sub_(dropped - WORD_VALUES // 2 - 1).clamp_(0, 1)
    return scale.mul_(WORD_VALUES / (WORD_VALUES - dropped))


class SixteenBitMaskDropout(nn.Dropout):
    """nn.Dropout whose training mask on a CPU comes from 16-bit words (`sixteen_bit_dropout_scale`)."""

    def draws_masks_for(self, input: torch.Tensor) -> bool:
        """Whether this call draws 16-bit masks (otherwise torch's own forward runs)."""
        return (self.training and not self.inplace and input.device.type == "cpu"
                and 0 < round(self.p * WORD_VALUES) < WORD_VALUES)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.draws_masks_for(input):
            return super().forward(input)
        # One product, whose backward is one product by the same saved factor (autograd keeps only the factor).
        # In float64 the factor is float64; otherwise float32, and a 16-bit input is multiplied in float32 and
        # rounded once, as torch's `mul_` by a Python number does: the same result as input * mask * scale.
        factor = sixteen_bit_dropout_scale(input.shape, self.p,
                                           torch.float64 if input.dtype == torch.float64 else torch.float32)
        return (input * factor).to(input.dtype)


def draw_sixteen_bit_dropout_masks(model: nn.Module) -> int:
    """Give every plain nn.Dropout of `model` (a transformers model or a PeftModel) 16-bit masks; returns how many
    dropouts have them. Dropout subclasses (other semantics, e.g. Dropout1d drops whole channels) are left alone.
    BERT-type encoders also get layers that apply the attention probabilities' dropout through their attention's
    dropout module, which SDPA would apply inside itself (head_token.draw_attention_dropout_through_the_module)."""
    # imported here: head_token imports this module for SixteenBitMaskDropout
    from .head_token import draw_attention_dropout_through_the_module

    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = SixteenBitMaskDropout
        count += isinstance(module, SixteenBitMaskDropout)
    draw_attention_dropout_through_the_module(model)
    return count


def uses_sixteen_bit_dropout_masks(model: nn.Module) -> bool:
    return any(isinstance(module, SixteenBitMaskDropout) for module in model.modules())
