"""mail_log_latest: each queue ID's latest mail_logs time, kept by the log totals triggers so
that an insert no longer probes every day partition for it (the SQL, and why, is in the .sql
file of the same name). Backwards puts the baseline's three functions back and drops the table.
"""

import re
from pathlib import Path

from app.db.migrations import script_migration
from app.db.migrations.mailrelay_2026_12_05t17_10_00_baseline import SQL as BASELINE_SQL

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


forwards = script_migration(
    ID, DESCRIPTION, SQL.read_text, lambda: baseline_functions() + "\nDROP TABLE mail_log_latest;"
)
