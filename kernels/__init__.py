"""Triton kernels for gpt-oss, one file per op, each beside its launcher; plain-torch references in `reference`."""
