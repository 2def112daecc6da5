"""Databases as the migration chain before the squash left them (dev and lab installs), for the
tests of the baseline migration."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import LEGACY_IDS
from app.db.migrations.mailrelay_2026_12_06t02_30_00_mail_log_latest import ID as LATEST_ID
from app.db.migrations.mailrelay_2026_12_06t12_00_00_identifiers_byte_order import (
    ID as BYTE_ORDER_ID,
)
from app.db.migrations.mailrelay_2026_12_06t13_00_00_mail_log_latest_room import ID as ROOM_ID
from app.db.migrations.mailrelay_2026_12_06t15_00_00_promotions import ID as PROMOTIONS_ID
from app.db.migrations.mailrelay_2026_12_07t02_00_00_tracking_lookups import ID as LOOKUPS_ID
from app.db.migrations.mailrelay_2026_12_07t04_00_00_tracking_newest import ID as NEWEST_ID
from app.db.migrations.mailrelay_2026_12_07t16_00_00_log_cursor_head import ID as HEAD_ID
from app.db.migrations.mailrelay_2026_12_07t20_00_00_alert_sending import ID as SENDING_ID
from tests.integration.test_cli import run

# The migrations after the baseline, in the order they run.
AFTER_BASELINE = (
    LATEST_ID,
    BYTE_ORDER_ID,
    ROOM_ID,
    PROMOTIONS_ID,
    LOOKUPS_ID,
    NEWEST_ID,
    HEAD_ID,
    SENDING_ID,
)


def migrated(scratch_databases: Callable[[str], str], name: str) -> str:
    """A new database brought up to date by `mailrelay migrate`, as an install does."""
    url = scratch_databases(name)
    result = run("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    return url


async def as_the_old_chain_left_it(url: str, ids: tuple[str, ...] = LEGACY_IDS) -> None:
    """Piccolo's record of `url` as a dev or lab install has it: the old chain's IDs (`ids`
    of them), without the baseline, and a sender domain as data to keep. The schema is the
    baseline's, which equals the old chain's (compared with pg_dump when the chain was
    squashed)."""
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.execute("DELETE FROM migration")
            await connection.execute(
                "INSERT INTO migration (name, app_name, ran_on) "
                "SELECT id, 'mailrelay', now() - interval '1 day' + n * interval '1 minute' "
                "FROM unnest($1::text[]) WITH ORDINALITY AS ids(id, n)",
                list(ids),
            )
            await connection.execute(
                "INSERT INTO sender_domains (name, comment) VALUES ('kept.example', 'data')"
            )
    finally:
        await connection.close()
