"""Build configuration that pyproject.toml cannot state: the shipped data as package data.

The checkout's ``assets/`` and ``configs/`` folders are mapped to the packages ``flowalign._data.assets`` and
``flowalign._data.configs``, so that a wheel (or a regular ``pip install .``) carries the files listed in
``SHIPPED_DATA`` under ``flowalign/_data/``. ``flowalign.resources`` states the lookup rule and lists the same
shipped paths (``SHIPPED``); tests/test_packaging.py checks that a built wheel holds each of them.
Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

#: data package → (source folder in the checkout, glob patterns of the files it ships)
SHIPPED_DATA = {
    "flowalign._data.assets": ("assets", ["toy-sd3/*.json", "toy-sd3/*.md", "toy-sd3/*/*", "prompts/*.txt"]),
    "flowalign._data.configs": ("configs", ["*.yaml", "models/*.json"]),
}

setup(
    packages=find_packages(include=["flowalign", "flowalign.*", "reward_models", "reward_models.*"])
    + list(SHIPPED_DATA),
    package_dir={package: folder for package, (folder, _) in SHIPPED_DATA.items()},
    package_data={package: patterns for package, (_, patterns) in SHIPPED_DATA.items()},
    include_package_data=False,
)
