"""Dropout masks drawn 16 random bits per element: the same dropout, with a quarter of torch's random draws on a CPU.

On a CPU, `nn.Dropout` draws its mask with `bernoulli_`, which on one thread turns one mt19937 double into each
element (torch takes an MKL path instead only on Intel CPUs). On this project's 2-core AMD EPYC the mask of one
batch of MiniLM's hidden states (16 x 28 x 384) took 1.09 ms that way and 0.31 ms this way
(benchmarks/dropout_masks.py); a profile on the Xeon, with MKL's path, still put the 32 masks of a step at 15% of
it (BENCHMARKS.md, "Levers").

Here each element compares one 16-bit word with a threshold, four words to each 64-bit draw of torch's default
generator (`random_` over the whole int64 range), and the mask stays a bool (a quarter of the float noise autograd
keeps for the stock backward). It is the same Bernoulli dropout except that p is rounded to a multiple of 1/65536
(0.1 becomes 0.100006); the kept elements are scaled by 1 / the keep probability really used, so the expectation
is the input's. It seeds like any torch draw (`torch.manual_seed`, the Trainer's seed), but its stream differs from
`bernoulli_`'s: a run with it differs from a stock run as a run with another seed would.

`training.LengthGroupedTrainer`, which the command line and the notebook train with, installs it
(RunConfig.dropout_masks, "16-bit" by default; not with --compile, whose generated code draws its own random
numbers) by swapping the class of each plain `nn.Dropout` instance (the model's and the adapter's): the module, its
`p` and every parameter name stay as they were, and a deep copy keeps it. Evaluation, p = 0 or 1, in-place dropouts
and tensors not on the CPU (CUDA's dropout is one fused kernel already) take the stock forward. Dropout that
attention kernels apply inside themselves (BERT's attention probabilities under SDPA) is not a module call, so it
stays torch's."""

from __future__ import annotations

import torch
from torch import nn

WORD_VALUES = 1 << 16  # a 16-bit word takes this many values; p is rounded to a multiple of its inverse


def sixteen_bit_keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - round(p * 65536) / 65536."""
    numel = shape.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    dropped = round(p * WORD_VALUES)  # words below the threshold are dropped
    return words.view(torch.int16)[:numel].view(shape) >= dropped - WORD_VALUES // 2


class SixteenBitMaskDropout(nn.Dropout):
    """nn.Dropout whose training mask on a CPU comes from `sixteen_bit_keep_mask`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * WORD_VALUES)
        if not self.training or self.inplace or input.device.type != "cpu" or not 0 < dropped < WORD_VALUES:
            return super().forward(input)
        keep = sixteen_bit_keep_mask(input.shape, self.p)
        # autograd keeps the bool mask for the backward (the scalar scale needs nothing kept)
        return (input * keep).mul_(WORD_VALUES / (WORD_VALUES - dropped))


def draw_sixteen_bit_dropout_masks(model: nn.Module) -> int:
    """Give every plain nn.Dropout of `model` (a transformers model or a PeftModel) 16-bit masks; returns how many
    dropouts have them. Dropout subclasses (other semantics, e.g. Dropout1d drops whole channels) are left alone."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = SixteenBitMaskDropout
        count += isinstance(module, SixteenBitMaskDropout)
    return count


def uses_sixteen_bit_dropout_masks(model: nn.Module) -> bool:
    return any(isinstance(module, SixteenBitMaskDropout) for module in model.modules())
