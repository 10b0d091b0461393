//! `tally migrate`: creates the database and applies the numbered DDL of
//! `schemas/clickhouse/` that it has not applied yet, recording each in
//! `schema_migrations`. Every statement is idempotent, so a migration cut short
//! is simply applied again.

use crate::config::ClickHouse;
use crate::sink::clickhouse::{Warehouse, WarehouseError};

/// The migrations, in order, compiled into the binary.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "tables", include_str!("../schemas/clickhouse/0001_tables.sql")),
    (2, "views", include_str!("../schemas/clickhouse/0002_views.sql")),
];

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database name cannot be used unquoted.
    #[error("clickhouse.database must be letters, digits and underscores, found {0:?}")]
    DatabaseName(String),
    /// The server refused or could not be reached.
    #[error("migration {step}: {source}")]
    Server {
        /// What was being done.
        step: String,
        /// The server's answer.
        source: WarehouseError,
    },
}

/// The statements of a migration file: split at `;` ending a line, comments dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String =
        sql.lines().filter(|line| !line.trim_start().starts_with("--")).map(|line| format!("{line}\n")).collect();
    without_comments.split(";\n").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Applies what is missing; returns the names of the migrations applied now.
pub fn migrate(config: &ClickHouse) -> Result<Vec<String>, MigrateError> {
    let database = &config.database;
    if database.is_empty() || !database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(MigrateError::DatabaseName(database.clone()));
    }
    let server = Warehouse::with_database(config, None);
    let fail = |step: &str| {
        let step = step.to_owned();
        move |source| MigrateError::Server { step, source }
    };
    server
        .block_on(server.client().query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute())
        .map_err(fail("create database"))?;
    let warehouse = Warehouse::new(config);
    let client = warehouse.client();
    warehouse
        .block_on(
            client
                .query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations \
                     (version UInt32, name String, applied_at DateTime) \
                     ENGINE = MergeTree ORDER BY version",
                )
                .execute(),
        )
        .map_err(fail("create schema_migrations"))?;
    let applied: Vec<u32> = warehouse
        .block_on(client.query("SELECT version FROM schema_migrations").fetch_all::<u32>())
        .map_err(fail("read schema_migrations"))?;
    let mut done = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        for statement in statements(sql) {
            warehouse.block_on(client.query(&statement).execute()).map_err(fail(name))?;
        }
        let record = format!("INSERT INTO schema_migrations VALUES ({version}, '{name}', now())");
        warehouse.block_on(client.query(&record).execute()).map_err(fail(name))?;
        done.push(format!("{version:04}_{name}"));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_under_schemas_is_a_migration_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/clickhouse");
        let mut files: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(v, name, _)| format!("{v:04}_{name}.sql")).collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn statements_split_at_line_ending_semicolons() {
        let sql =
            "-- a comment; with a semicolon\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\nCREATE VIEW b AS SELECT 1;\n";
        assert_eq!(statements(sql), ["CREATE TABLE a (x UInt8) ENGINE = Memory", "CREATE VIEW b AS SELECT 1"]);
    }
}
