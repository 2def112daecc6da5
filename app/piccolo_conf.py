"""Piccolo's engine and app registry (PICCOLO_CONF=app.piccolo_conf).

The DSN is read from DATABASE_URL when Piccolo first needs the engine, so importing this module
never fails; `mailrelay` validates the variable before it touches the database.
"""

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

DB = PostgresEngine(config={"dsn": os.environ.get("DATABASE_URL", "postgresql:///mailrelay")})

APP_REGISTRY = AppRegistry(apps=["app.db.piccolo_app"])
