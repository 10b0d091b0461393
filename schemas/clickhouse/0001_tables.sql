-- The contract's four tables. Every table is a ReplacingMergeTree keyed by the
-- row's identity with a `version` that only grows: writing a row twice is
-- harmless, readers use FINAL or argMax(…, version). Money is Decimal(38, 12).
-- Valid on ClickHouse 18.16 and on current releases.

CREATE TABLE IF NOT EXISTS usage_breakdown
(
    account_id   String,
    window_start DateTime,
    resource_id  String,
    sku          String,
    project_id   String,
    region       String,
    labels       String,
    usage        Decimal(38, 12),
    unit         String,
    cost         Decimal(38, 12),
    currency     String,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (account_id, window_start, resource_id, sku);

CREATE TABLE IF NOT EXISTS account_totals
(
    account_id String,
    day        Date,
    sku        String,
    usage      Decimal(38, 12),
    cost       Decimal(38, 12),
    currency   String,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, day, sku);

CREATE TABLE IF NOT EXISTS pipeline_progress
(
    pipeline     String,
    watermark    DateTime,
    final_before DateTime,
    epoch        UInt64,
    committed_at DateTime,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY pipeline;

CREATE TABLE IF NOT EXISTS rejected_events
(
    topic       String,
    `partition` Int32,
    `offset`    Int64,
    reason      String,
    detail      String,
    payload     String,
    truncated   UInt8,
    received_at DateTime,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(received_at)
ORDER BY (topic, `partition`, `offset`);
