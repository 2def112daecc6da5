"""mail_log_latest: each queue ID's latest mail_logs time, kept by the log totals triggers so
that an insert no longer probes every day partition for it (the SQL, and why, is in the .sql
file of the same name). Backwards puts the baseline's three functions back and drops the table.
"""

import re
from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import SQL as BASELINE_SQL
from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import _connection

ID = "2026-12-06T02:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "mail_log_latest: the totals trigger reads each queue ID's latest time"

SQL = Path(__file__).with_suffix(".sql")
# The functions this migration replaces, as the baseline defines them.
REPLACED = ("mail_log_totals_apply", "mail_log_totals_trigger", "log_totals_rebuild")


def baseline_functions() -> str:
    """The baseline's CREATE FUNCTION statements of REPLACED, as CREATE OR REPLACE."""
    text = BASELINE_SQL.read_text()
    statements = []
    for name in REPLACED:
        found = re.search(rf"^CREATE FUNCTION {name}\(.*?^\$\$;$", text, re.M | re.S)
        assert found is not None, f"the baseline defines {name}"
        statements.append(found[0].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    return "\n".join(statements)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="mailrelay", description=DESCRIPTION)

    async def run():
        await _connection().execute(SQL.read_text())

    async def run_backwards():
        await _connection().execute(baseline_functions() + "\nDROP TABLE mail_log_latest;")

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
