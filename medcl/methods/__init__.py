"""Training methods, registered by name (``method.name`` in a config), and the one validation of a config.

:func:`validate_config` is where a raw config dict becomes a :class:`~medcl.config.Config`: the schema checks
every section and the named method's ``Params`` types ``method.*``. It sits here, above the methods, so the
schema (:mod:`medcl.config`) never imports a method.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from medcl.config import Config, format_validation_error
from medcl.errors import ConfigError
from medcl.methods.actionpp import ActionPP
from medcl.methods.actionpp_pretrain import PretrainActionPP
from medcl.methods.base import DataSpec, Method, MethodParams, RunFacts
from medcl.methods.fixmatch import FixMatch
from medcl.methods.mcsc import MCSC
from medcl.methods.pretrain import PretrainGlobal, PretrainLocal
from medcl.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Supervised, FixMatch, PretrainGlobal, PretrainLocal, MCSC, PretrainActionPP, ActionPP)
}

__all__ = [
    "METHODS",
    "DataSpec",
    "Method",
    "MethodParams",
    "build_method",
    "method_params",
    "validate_config",
]


def build_method(cfg: Config, spec: DataSpec) -> Method:
    """Instantiate the method named by ``cfg.method.name``: its typed Params and the run facts it needs."""
    return METHODS[cfg.method_name](cfg.method, RunFacts.of(cfg), spec)


def method_params(section: Any, where: str = "") -> MethodParams:
    """``method.*`` validated by the ``Params`` model of the named method (defaults filled)."""
    if isinstance(section, MethodParams):
        section = section.model_dump(mode="json")
    if not isinstance(section, dict):
        raise ConfigError(
            f"invalid configuration{where}:\n  config key 'method' must be a section, got {section!r}"
        )
    name = section.get("name", "supervised")
    if not isinstance(name, str):
        raise ConfigError(f"invalid configuration{where}:\n  method.name is required (e.g. 'supervised')")
    if name not in METHODS:
        raise ConfigError(f"unknown method.name {name!r}{where}; available: {', '.join(sorted(METHODS))}")
    params_model = METHODS[name].Params
    try:
        return params_model.model_validate({**section, "name": name})
    except ValidationError as err:
        msg = format_validation_error(err, "method", where)
        allowed = ", ".join(sorted(params_model.model_fields))
        for e in err.errors():
            if e["type"] == "extra_forbidden":
                msg = msg.replace(
                    f"unknown config key 'method.{e['loc'][0]}'",
                    f"unknown config key 'method.{e['loc'][0]}' (allowed for {name}: {allowed})",
                )
        raise ConfigError(msg) from None


def validate_config(raw: dict[str, Any], source: str = "") -> Config:
    """A raw config dict (a YAML file's, a checkpoint's) validated once: every section, ``method.*`` typed."""
    raw = copy.copy(raw)
    where = f" ({source})" if source else ""
    raw["method"] = method_params(raw.get("method") or {"name": "supervised"}, where)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "", where)) from None
