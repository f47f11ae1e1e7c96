"""PyTorch's float32 -> bfloat16 conversion (round to nearest even) for test_bf16.cpp.

Usage: bf16_torch.py IN OUT. IN holds float32 bit patterns (uint32, native byte order); OUT gets
the bfloat16 bit patterns torch produces for them (uint16, native byte order).
"""
import sys

import numpy
import torch

bits = numpy.fromfile(sys.argv[1], dtype=numpy.uint32)
floats = torch.from_numpy(bits.view(numpy.float32).copy())
converted = floats.to(torch.bfloat16).view(torch.int16).numpy().view(numpy.uint16)
converted.tofile(sys.argv[2])
