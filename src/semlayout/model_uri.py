"""Registry model URIs: `models:/NAME@ALIAS` and `models:/NAME/VERSION`, one type for both."""

from __future__ import annotations

import os
from dataclasses import dataclass

from semlayout.errors import SemlayoutError

SCHEME = "models:/"


@dataclass(frozen=True)
class ModelUri:
    """A registered model version, named by number or by alias (exactly one of the two)."""

    name: str
    version: str | None = None
    alias: str | None = None

    @staticmethod
    def is_model_uri(text: str | os.PathLike[str]) -> bool:
        return str(text).startswith(SCHEME)

    @staticmethod
    def logged_model_id(text: str) -> str | None:
        """'models:/m-<id>' (an MLflow 3 logged model, not a registry version) -> 'm-<id>'."""
        return text[len(SCHEME) :] if text.startswith(f"{SCHEME}m-") else None

    @classmethod
    def parse(cls, uri: str) -> ModelUri:
        """'models:/NAME@ALIAS' or 'models:/NAME/3'; anything else is a `SemlayoutError`."""
        rest = uri[len(SCHEME) :].strip("/") if cls.is_model_uri(uri) else ""
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if name and alias and "/" not in name:
                return cls(name, alias=alias)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            if name and "/" not in name and version.isdigit():
                return cls(name, version=version)
        raise SemlayoutError(
            f"model URI '{uri}' is not valid: expected models:/NAME@ALIAS or models:/NAME/VERSION"
        )

    def pinned(self, version: str | int) -> ModelUri:
        """The same model named by its version number (what an alias resolved to)."""
        return ModelUri(self.name, version=str(version))

    def __str__(self) -> str:
        return (
            f"{SCHEME}{self.name}@{self.alias}"
            if self.alias
            else f"{SCHEME}{self.name}/{self.version}"
        )
