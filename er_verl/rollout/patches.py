"""Version-gated patches of verl from the repository's ``patches/`` folder, applied when their module loads.

A patch is ``patches/verl_<version with underscores>/<name>.py`` defining ``MODULE`` (the dotted module it
patches) and ``apply(module) -> bool`` (False: already applied, nothing changed). Only the folder naming
the installed verl version is used. Each patch runs right after its module is first imported (a
``sys.meta_path`` finder that wraps the module's loader), or at once if the module is already imported,
so installing patches imports nothing heavy. ``patches/`` sits beside the package: an editable install
or a source checkout has it; elsewhere :func:`install` finds no folder and returns [].
"""

import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

PATCHES = Path(__file__).resolve().parents[2] / "patches"


def folder_for(verl_version: str, root: Path = PATCHES) -> Path:
    return root / ("verl_" + verl_version.replace(".", "_"))


def install(verl_version: str, root: Path = PATCHES) -> list[str]:
    """Arrange every patch for ``verl_version``; returns their module names (e.g. ``verl_0_9_1.v1_spec_metrics``)."""
    folder = folder_for(verl_version, root)
    names = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        name = f"{folder.name}.{path.stem}"
        patch = load(path)
        after_import(patch.MODULE, _logged(name, patch.apply))
        names.append(name)
    return names


def load(path: Path):
    """The patch file at ``path`` as a module (its ``MODULE`` and ``apply``), without applying it."""
    spec = importlib.util.spec_from_file_location(f"er_verl_patch_{path.parent.name}_{path.stem}", path)
    patch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patch)
    return patch


def _logged(name: str, apply: Callable) -> Callable:
    def run(module) -> None:
        try:
            changed = apply(module)
        except Exception:  # noqa: BLE001 - a patch that cannot apply must not break verl
            logger.warning("er_verl: patch %s failed on %s; verl runs unpatched", name, module.__name__, exc_info=True)
            return
        if changed:
            print(f"er_verl: applied patch {name} to {module.__name__}", flush=True)
    return run


def after_import(module_name: str, fn: Callable) -> None:
    """Call ``fn(module)`` once ``module_name`` is imported (now, if it already is)."""
    if module_name in sys.modules:
        fn(sys.modules[module_name])
    else:
        sys.meta_path.insert(0, _AfterImport(module_name, fn))


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, module_name: str, fn: Callable):
        self.module_name, self.fn = module_name, fn

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenCall(spec.loader, self.fn)
        return spec


class _ThenCall(importlib.abc.Loader):
    """The module's own loader, then ``fn(module)``."""

    def __init__(self, inner, fn: Callable):
        self.inner, self.fn = inner, fn

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        self.fn(module)

    def __getattr__(self, name):  # get_source, get_filename, ... for inspect and linecache
        return getattr(self.inner, name)
