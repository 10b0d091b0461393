"""Applies tally's ClickHouse migrations to a current ClickHouse (chdb embeds
it in-process) and runs the views, so that SQL the Debian 18.16 server accepts
but current releases reject is caught. Usage: modern_clickhouse.py FILE.sql..."""
import sys

import chdb
from chdb import session


def statements(text):
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]


def main(paths):
    db = session.Session()
    db.query("CREATE DATABASE IF NOT EXISTS tally")
    db.query("USE tally")
    for path in paths:
        with open(path) as f:
            for statement in statements(f.read()):
                db.query(statement)
        # Idempotent: applying twice changes nothing.
        with open(path) as f:
            for statement in statements(f.read()):
                db.query(statement)
    db.query("INSERT INTO usage_breakdown VALUES ('acc', '2026-11-23 10:00:00', 'vm', 'compute.vcpu', 'p', 'r', '{}', "
             "toDecimal128('14400', 12), 'vcpu', toDecimal128('0.05', 12), 'EUR', 1)")
    db.query("INSERT INTO account_totals VALUES ('acc', '2026-11-23', 'compute.vcpu', toDecimal128('14400', 12), "
             "toDecimal128('0.05', 12), 'EUR', 1)")
    db.query("INSERT INTO pipeline_progress VALUES ('t', '2026-11-25 00:00:00', '2026-11-24 05:00:00', 3, now(), 1)")
    db.query("INSERT INTO rejected_events VALUES ('t', 0, 7, 'late', 'd', 'raw', 0, now(), 1)")
    invoice = db.query("SELECT account_id, month, sku, total_cost FROM invoice_month_totals", "CSV").data().strip()
    assert invoice == '"acc","2026-11-01","compute.vcpu",0.05', invoice
    top = db.query("SELECT resource_id, cost FROM top_resources_by_day", "CSV").data().strip()
    assert top == '"vm",0.05', top
    by_project = db.query("SELECT project_id, region, cost FROM cost_by_project_region_day", "CSV").data().strip()
    assert by_project == '"p","r",0.05', by_project
    print("modern ClickHouse", db.query("SELECT version()", "CSV").data().strip(), "accepts", len(paths), "migrations")


if __name__ == "__main__":
    main(sys.argv[1:])
