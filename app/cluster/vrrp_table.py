"""The table of VRRP state changes (vrrp_events).

The class lives in app/db/tables.py with its migration; app.cluster.vrrp imports it from here so
that it needs no change if the table moves again, and app.db never imports app.cluster.
"""

from app.db.tables import VrrpEvent

__all__ = ["VrrpEvent"]
