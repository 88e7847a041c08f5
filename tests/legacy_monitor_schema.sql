-- The monitoring store's SQLite DDL of semlayout 0.1.0 (before migrations): tests check that
-- a database created with it is adopted and upgraded as it is.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    direction TEXT NOT NULL,
    model_version TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    output_png BLOB
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS inference_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    direction TEXT,
    prediction_id TEXT,
    model_version TEXT,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    error TEXT,
    latency_ms REAL NOT NULL,
    forward_ms REAL,
    batch_size INTEGER,
    input_stats TEXT,
    output_stats TEXT
);
CREATE INDEX IF NOT EXISTS inference_events_ts ON inference_events (ts);
CREATE TABLE IF NOT EXISTS drift_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    prediction_id TEXT,
    direction TEXT NOT NULL,
    drifted INTEGER NOT NULL,
    max_abs_z REAL NOT NULL,
    kl REAL NOT NULL,
    score REAL NOT NULL,
    z TEXT NOT NULL,
    features TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_events_dir ON drift_events (direction, id);
CREATE TABLE IF NOT EXISTS ground_truth (
    prediction_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    direction TEXT NOT NULL,
    model_version TEXT NOT NULL,
    l1 REAL NOT NULL,
    ssim REAL NOT NULL,
    psnr REAL NOT NULL,
    iou REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ground_truth_dir ON ground_truth (direction, ts);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    pattern_type TEXT NOT NULL,
    sem_sha256 TEXT NOT NULL,
    layout_sha256 TEXT NOT NULL,
    sem_path TEXT NOT NULL,
    layout_path TEXT NOT NULL,
    folder TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts);
CREATE TABLE IF NOT EXISTS trigger_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    fired INTEGER NOT NULL,
    run_id TEXT,
    details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS loop_consumed (source TEXT NOT NULL, key TEXT NOT NULL, pair_id TEXT NOT NULL, run_id TEXT NOT NULL, qc_failed INTEGER, ts REAL NOT NULL, PRIMARY KEY (source, key));
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
