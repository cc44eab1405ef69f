"""Datasets in the CoOp layout, few-shot sampling, base/novel split, LLM descriptions."""
from anchoropt.data.datasets import STANDARD_DATASETS, DataError, DatasetSplits, Datum, build_dataset
from anchoropt.data.descriptions import CUPL_FILES, load_descriptions
from anchoropt.data.fewshot import base_novel_labels, fewshot_splits, subsample

__all__ = ["STANDARD_DATASETS", "DataError", "DatasetSplits", "Datum", "build_dataset", "CUPL_FILES",
           "load_descriptions", "base_novel_labels", "fewshot_splits", "subsample"]
