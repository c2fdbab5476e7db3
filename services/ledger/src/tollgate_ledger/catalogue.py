"""The Dodo catalogue (packs, credit entitlement) as bootstrap wrote it; re-read when the file
changes, so a ledger started before `tollgate dodo bootstrap` picks it up without a restart."""

from __future__ import annotations

from pathlib import Path

from tollgate_dodo.catalogue import Catalogue, Pack


class CatalogueSource:
    def __init__(self, path: Path, fixed: Catalogue | None = None) -> None:
        self.path = path
        self._fixed = fixed
        self._cached: Catalogue | None = None
        self._mtime: float | None = None

    def get(self) -> Catalogue | None:
        if self._fixed is not None:
            return self._fixed
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._cached
        if mtime != self._mtime:
            self._cached = Catalogue.load(self.path)
            self._mtime = mtime
        return self._cached

    def pack(self, product_id: str) -> Pack | None:
        catalogue = self.get()
        return catalogue.pack(product_id) if catalogue else None

    def find_pack(self, ref: str) -> Pack | None:
        """A pack by product id or by (case-insensitive) name."""
        catalogue = self.get()
        if catalogue is None:
            return None
        return catalogue.pack(ref) or next((p for p in catalogue.packs if p.name.lower() == ref.lower()), None)

    @property
    def credit_entitlement_id(self) -> str | None:
        catalogue = self.get()
        return catalogue.credit_entitlement_id if catalogue else None
