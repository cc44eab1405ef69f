"""Packages: the library, plus the default suites (benchmarks/) and search spaces (search_spaces/) shipped
inside it as ``anchoropt.suites`` and ``anchoropt.spaces`` (package data; anchoropt.paths.shipped finds them).
Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

SHIPPED = {"anchoropt.suites": "benchmarks", "anchoropt.spaces": "search_spaces"}

setup(packages=[*find_packages(include=["anchoropt*"]), *SHIPPED], package_dir=SHIPPED)
