"""Where app.cluster.vrrp finds its table (defined with the others in app.db.tables)."""

from app.db.tables import VrrpEvent

__all__ = ["VrrpEvent"]
