-- Views for analysts and invoicing. All read FINAL and skip rows corrected to
-- zero usage.

-- Cost per account, project, region and UTC day.
CREATE VIEW IF NOT EXISTS cost_by_project_region_day AS
SELECT
    account_id,
    toDate(window_start, 'UTC') AS day,
    project_id,
    region,
    currency,
    sum(cost) AS cost
FROM usage_breakdown FINAL
WHERE usage != 0
GROUP BY account_id, day, project_id, region, currency;

-- Cost per resource and UTC day, most expensive first.
CREATE VIEW IF NOT EXISTS top_resources_by_day AS
SELECT
    account_id,
    resource_id,
    toDate(window_start, 'UTC') AS day,
    currency,
    sum(cost) AS cost
FROM usage_breakdown FINAL
WHERE usage != 0
GROUP BY account_id, resource_id, day, currency
ORDER BY cost DESC;

-- Month totals per account and SKU over the days whose every window is final:
-- what invoicing bills.
CREATE VIEW IF NOT EXISTS invoice_month_totals AS
SELECT
    account_id,
    toStartOfMonth(day) AS month,
    sku,
    currency,
    sum(usage) AS total_usage,
    sum(cost) AS total_cost
FROM account_totals FINAL
WHERE usage != 0
  AND day < (SELECT toDate(min(final_before), 'UTC') FROM pipeline_progress FINAL)
GROUP BY account_id, month, sku, currency;
