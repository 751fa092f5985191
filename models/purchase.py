"""The purchase models by name, as stored with a scoring run."""

from __future__ import annotations

from models.beta_geo import BetaGeoModel
from models.pareto_nbd import ParetoNBDModel

PURCHASE_MODELS: dict[str, type[BetaGeoModel] | type[ParetoNBDModel]] = {
    "bgnbd": BetaGeoModel,
    "pareto_nbd": ParetoNBDModel,
}


def purchase_model(name: str, params: dict[str, float]) -> BetaGeoModel | ParetoNBDModel:
    """Rebuild a fitted purchase model from its stored name and parameters."""
    try:
        cls = PURCHASE_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown purchase model {name!r}; known: "
                         + ", ".join(PURCHASE_MODELS)) from None
    return cls.from_params(params)
