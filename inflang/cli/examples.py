"""Queries that users reach for first (`inflang query --examples`)."""

from __future__ import annotations

EXAMPLES: list[tuple[str, str]] = [
    ("Studies, their cells and how many finished",
     "SELECT study, count(*) AS cells, count(*) FILTER (WHERE status = 'done') AS done FROM cells GROUP BY study"),
    ("Mean Spearman and Pearson per cell and estimator, with the swept values",
     "SELECT study, estimator, params, metric, round(value, 3) AS value, ci_low, ci_high FROM cell_results "
     "WHERE metric IN ('spearman', 'pearson') ORDER BY study, params, estimator, metric"),
    ("Pooled over seeds: each sweep point's mean, spread between seeds and 95% interval",
     "SELECT study, params, estimator, metric, round(value, 3) AS value, round(sd, 3) AS sd_over_seeds, "
     "round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high, seeds, test_points FROM sweep_results "
     "WHERE metric IN ('spearman', 'noise_ceiling_spearman') ORDER BY ALL"),
    ("The paper's depth table: correlation and top Hessian eigenvalue by depth",
     "SELECT json_extract(c.params, '$.\"model.depth\"') AS depth, "
     "json_extract(c.params, '$.\"training.weight_decay\"') AS weight_decay, c.estimator, "
     "round(c.value, 3) AS spearman, round(m.hessian_top_eigenvalues[1], 2) AS top_eigenvalue "
     "FROM cell_results c JOIN models m USING (study, cell_id) WHERE c.study = 'paper-iris-depth' "
     "AND c.metric = 'spearman' ORDER BY ALL"),
    ("Estimated vs actual effect of every evaluated removal for one test point of one cell of a study",
     "WITH one AS (SELECT cell_id, min(test_index) AS test_index FROM influence WHERE study = 'quickstart' "
     "GROUP BY cell_id ORDER BY cell_id LIMIT 1) SELECT i.cell_id, i.test_index, i.estimator, i.train_index, "
     "i.estimate, i.actual FROM influence i JOIN one USING (cell_id, test_index) WHERE i.study = 'quickstart' "
     "AND i.actual IS NOT NULL ORDER BY abs(i.actual) DESC LIMIT 20"),
    ("Each cell's Spearman next to the ground truth's noise ceiling",
     "SELECT m.study, m.cell_id, m.estimator, round(m.value, 3) AS spearman, round(n.value, 3) AS ceiling "
     "FROM metrics m JOIN metrics n ON n.cell_id = m.cell_id AND n.metric = 'noise_ceiling_spearman' "
     "AND n.test_index IS NULL WHERE m.metric = 'spearman' AND m.test_index IS NULL"),
    ("Removals whose sign the estimate got wrong, largest actual effect first",
     "SELECT study, cell_id, estimator, test_index, train_index, estimate, actual FROM influence "
     "WHERE study = 'quickstart' AND sign(estimate) <> sign(actual) ORDER BY abs(actual) DESC LIMIT 20"),
    ("Mislabelled training points (label_noise) ranked by self-influence proxy |estimate|",
     "SELECT p.study, p.cell_id, p.train_index, p.label_flipped, avg(abs(p.estimate)) AS strength "
     "FROM influence_pairs p WHERE p.study = 'quickstart' GROUP BY ALL ORDER BY strength DESC LIMIT 20"),
    ("Trained models: size, accuracy and curvature",
     "SELECT study, cell_id, n_params, round(test_accuracy, 3) AS accuracy, hessian_top_eigenvalues, "
     "hessian_min_eigenvalue FROM models ORDER BY study, cell_id"),
    ("Failed cells and why",
     "SELECT study, cell_id, params, error FROM cells WHERE status = 'failed'"),
    ("Runs: when, how long, with what",
     "SELECT run_id, study, started_at, ended_at - started_at AS took, status, host, inflang_version "
     "FROM runs ORDER BY started_at DESC"),
]


HEADER = ("-- Queries over every study, or over one: 'quickstart' (or 'paper-iris-depth', the paper's table) "
          "stands for your study's name.\n\n")


def text() -> str:
    return HEADER + "\n\n".join(f"-- {title}\n{sql};" for title, sql in EXAMPLES) + "\n"
