"""The built-in guidance methods, one file each; importing this package registers every module in
it, so a new method is one new file (docs/extending.md)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
