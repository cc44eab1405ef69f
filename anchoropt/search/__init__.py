"""Hyperparameter search: declarative spaces (:mod:`.space`), the request (:mod:`.spec`), the ledger
(:mod:`.ledger`), the Ray trial (:mod:`.trial`), the outputs (:mod:`.outputs`), the driver (:mod:`.driver`).

``from anchoropt.search.driver import run_search`` (imports Ray); the space module alone does not.
"""
