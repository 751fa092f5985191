-- depends: 0016.console
-- Rendered diagnostics plots (SVG) of published runs. A run never changes after it is
-- published, so each plot is rendered once per language (by the scoring run, or by the first
-- request) and then served from here by every API process.
CREATE TABLE run_plots (
    run_id  bigint NOT NULL REFERENCES scoring_runs (id) ON DELETE CASCADE,
    name    text NOT NULL,
    lang    text NOT NULL,
    svg     bytea NOT NULL,
    PRIMARY KEY (run_id, name, lang)
);
