"""The package list, which pyproject.toml cannot say: rlhf* and stages*, plus the top-level data/ and configs/,
which a wheel carries inside the package as rlhf/_shipped/{data,configs} (rlhf.paths finds them there when there is
no checkout around the package). Every directory under them is its own data-only package, so nothing is left out."""

from pathlib import Path

from setuptools import find_packages, setup

package_dir, package_data = {}, {}
for top in ("data", "configs"):
    for folder in [Path(top), *sorted(p for p in Path(top).rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        name = ".".join(("rlhf", "_shipped", *folder.parts))
        package_dir[name] = str(folder)
        package_data[name] = ["*"]

setup(packages=find_packages(include=["rlhf*", "stages*"]) + list(package_dir),
      package_dir=package_dir, package_data=package_data)
