"""Process-level services below every other layer: the compute device, torchrun/DDP facts, checkpoint files.

Everything here imports only torch, numpy and :mod:`medcl.errors`, so losses, models, the engine and
inference can all use it without importing each other.
"""
