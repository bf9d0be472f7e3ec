"""Results: the database (store), the statistics of each number (stats, intervals), seeds pooled per sweep point
(pooling), claims answered with verdicts (claims, evidence, power, settle, sequential), health checks
(diagnostics) and the HTML report (report)."""
