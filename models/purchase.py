"""The purchase models by name, as stored with a scoring run."""

from __future__ import annotations

from models.beta_geo import BetaGeoModel
from models.modified_beta_geo import ModifiedBetaGeoModel
from models.pareto_nbd import ParetoNBDModel

PurchaseModel = BetaGeoModel | ModifiedBetaGeoModel | ParetoNBDModel

# Every candidate of a run's holdout selection, by the name stored with the run.
PURCHASE_MODELS: dict[str, type[BetaGeoModel] | type[ParetoNBDModel]] = {
    "bgnbd": BetaGeoModel,
    "mbgnbd": ModifiedBetaGeoModel,
    "pareto_nbd": ParetoNBDModel,
}


def label(name: str) -> str:
    """The model's name as the literature writes it ("BG/NBD"); the stored name if unknown."""
    cls = PURCHASE_MODELS.get(name)
    return cls.label if cls is not None else name


def purchase_model(name: str, params: dict[str, float]) -> BetaGeoModel | ParetoNBDModel:
    """Rebuild a fitted purchase model from its stored name and parameters."""
    try:
        cls = PURCHASE_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown purchase model {name!r}; known: "
                         + ", ".join(PURCHASE_MODELS)) from None
    return cls.from_params(params)
