"""Hatch build hook: find the aiki_client package wherever this project is built from.

The package lives at the repository root, beside aiki_server, two levels above this directory; in
an unpacked sdist it sits right here. A static `force-include` of "../../aiki_client" made the sdist
unbuildable (pip install aiki_client-*.tar.gz failed), hence this hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return  # `pip install -e`: dev-mode-dirs puts the repository root on sys.path instead
        package = Path(self.root).parent.parent / "aiki_client"
        if (Path(self.root) / "aiki_client").is_dir() or not package.is_dir():
            return  # an unpacked sdist: the package is a project file here, found like any other
        build_data["force_include"][str(package)] = "aiki_client"
