"""Hyperparameter search: declarative spaces (:mod:`.space`), Optuna + Ray Tune driver (:mod:`.driver`).

``from anchoropt.search.driver import run_search`` (imports Ray); the space module alone does not.
"""
