"""Roles and what each may do. Higher roles include everything below them."""

from __future__ import annotations

from enum import IntEnum

from app.messages import Message


class Role(IntEnum):
    readonly = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value]
        except KeyError:
            raise ValueError(
                Message("unknown role {role!r} (admin, operator, readonly)", role=value)
            ) from None

    @property
    def label(self) -> str:
        return {"readonly": "ReadOnly", "operator": "Operator", "admin": "Admin"}[self.name]
