"""The motion library a shard evaluated, as the exporter and the replay renderer read it (§1.1-1.5)."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError


@dataclass
class Source:
    root: Path
    robot: dict[str, Path] = field(default_factory=dict)
    objects: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Path] = field(default_factory=dict)
    usd: dict[str, Path] = field(default_factory=dict)
    usd_root: Path | None = None

    @classmethod
    def scan(cls, root: Path) -> Source:
        if not (root / "robot").is_dir():
            raise DataError("source library has no robot/ dir", path=root,
                            fix="--source_data must be the library the shard evaluated")
        src = cls(root)
        # Terrain libraries nest files per kind (robot/stairs/<key>.pkl), hence rglob.
        for sub, table in (("robot", src.robot), ("objects", src.objects), ("meta", src.meta)):
            for p in sorted((root / sub).rglob("*.pkl")) if (root / sub).is_dir() else []:
                if p.stem != "metadata":
                    table.setdefault(p.stem, p)
        # `_ha` libraries have no object_usd/; GRAIL keeps the USDs in the non-`_ha` sibling (§10.8).
        usd_root = root / "object_usd"
        if not usd_root.is_dir() and root.name.endswith("_ha"):
            usd_root = root.parent / root.name[: -len("_ha")] / "object_usd"
        if usd_root.is_dir():
            src.usd_root = usd_root
            for p in sorted(usd_root.rglob("*.usd*")):
                if p.suffix in (".usd", ".usda") and p.stem != "flat_placeholder" and "textures" not in p.parts:
                    src.usd.setdefault(p.stem, p)
        return src

    def inner(self, table: dict[str, Path], key: str, what: str) -> dict | None:
        path = table.get(key)
        if path is None:
            return None
        data = safe_pickle.load(path)
        if not isinstance(data, dict):
            raise DataError(f"{what} pickle is not a dict", path=path)
        if what == "meta":
            return data
        if key not in data or not isinstance(data[key], dict):
            raise DataError(f"{what} pickle is not a single-key dict {{{key!r}: {{...}}}}", path=path)
        return data[key]

    def textures(self, key: str) -> list[Path]:
        """Both layouts of §1.5: flat ``textures/<key>_*`` and nested ``textures/<key>/``."""
        if self.usd_root is None or not (self.usd_root / "textures").is_dir():
            return []
        tex = self.usd_root / "textures"
        names = self._texture_names(tex)
        # One sorted listing, searched by prefix: a glob per key made export quadratic in keys.
        prefix = f"{key}_"
        flat = []
        for name in names[bisect.bisect_left(names, prefix):]:
            if not name.startswith(prefix):
                break
            if (tex / name).is_file():
                flat.append(tex / name)
        nested = [p for p in (tex / key).rglob("*") if p.is_file()] if (tex / key).is_dir() else []
        return sorted(flat + nested)

    def _texture_names(self, tex: Path) -> list[str]:
        cached = self.__dict__.get("_texture_listing")
        if cached is None:
            cached = sorted(os.listdir(tex))
            self.__dict__["_texture_listing"] = cached
        return cached

