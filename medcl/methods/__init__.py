"""Training methods, registered by name (``method.name`` in a config)."""

from __future__ import annotations

from medcl.methods.actionpp import ActionPP, PretrainActionPP
from medcl.methods.base import DataSpec, Method, MethodParams
from medcl.methods.fixmatch import FixMatch
from medcl.methods.mcsc import MCSC
from medcl.methods.pretrain import PretrainGlobal, PretrainLocal
from medcl.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Supervised, FixMatch, PretrainGlobal, PretrainLocal, MCSC, PretrainActionPP, ActionPP)
}

__all__ = ["METHODS", "DataSpec", "Method", "MethodParams", "build_method"]


def build_method(cfg, spec: DataSpec) -> Method:
    """Instantiate the method named by ``cfg.method["name"]``."""
    return METHODS[cfg.method_name](cfg, spec)
