//! `sql.out`: writes each message as one row of a table in SQLite (the embedded default,
//! a file in the data directory) or PostgreSQL. Rows are inserted in batches, one
//! transaction per batch with a multi-row `INSERT` and bound parameters; a message is
//! done only once the transaction holding its row committed. An unreachable database is
//! retried with capped exponential backoff (nothing is acknowledged meanwhile, so
//! backpressure or the disk buffer takes over); a row the database refuses (a type
//! error, a constraint) is found by splitting the batch and goes alone to the `error`
//! port with the database's message.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
// Every SQL text is built from validated identifiers and placeholders only; values are
// always bound parameters, which is what `AssertSqlSafe` asserts.
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::engine::fields::{FieldPath, MsgView, to_number, to_text};
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture, NodeId};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// The SQLite file used when `url` is left out, inside the data directory.
pub const DEFAULT_SQLITE_FILE: &str = "headwater.sqlite";

/// Options of a `sql.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlOutConfig {
    /// The database: `sqlite://PATH` (relative paths are inside the data directory) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (put the password in with `${file:...}`
    /// or `${ENV}`). Default: the SQLite file `headwater.sqlite` in the data directory.
    pub url: Option<String>,
    /// The table; letters, digits and `_` only, created if missing. Never a template.
    pub table: String,
    /// Column name -> message field (`timestamp`, `topic`, `id`, `payload`,
    /// `payload.a.b`, `headers.x`), or `{ field, type }` with a type of `text`,
    /// `integer`, `real`, `boolean`, `json`, `timestamptz` (or `auto`, SQLite only).
    /// Default: `ts: timestamp`, `topic: topic`, `payload: payload` (the whole payload
    /// as JSON).
    pub columns: Option<Columns>,
    /// When a batch is written: after `rows` messages or `interval` after its first one,
    /// whichever comes first (default 500 rows, 100ms).
    #[serde(default)]
    pub batch: BatchSettings,
    /// Key columns for an upsert: a row whose key exists replaces the old one
    /// (`ON CONFLICT (...) DO UPDATE`), so a redelivered message does not add a row. The
    /// table is created with these columns as its primary key. Default: plain inserts.
    #[serde(default)]
    pub upsert: Vec<String>,
}

/// `batch:` of `sql.out`.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Most rows in one transaction (default 500, at most 10000).
    #[serde(default = "default_rows")]
    #[schemars(range(min = 1, max = 10000))]
    pub rows: usize,
    /// Longest wait for more rows after the first one of a batch (default `100ms`).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

fn default_rows() -> usize {
    500
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            rows: default_rows(),
            interval: default_interval(),
        }
    }
}

/// The logical type of a column: decides how the message value is converted and bound,
/// and the SQL type the table is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// SQLite only: no declared type; numbers, strings and booleans keep their JSON type,
    /// objects and arrays are stored as JSON text.
    Auto,
    /// Text (`TEXT`); non-strings as JSON.
    Text,
    /// A 64-bit integer (`INTEGER` / `BIGINT`); numeric strings are accepted.
    Integer,
    /// A double (`REAL` / `DOUBLE PRECISION`); numeric strings are accepted.
    Real,
    /// A boolean (`BOOLEAN`); also `0`/`1` and `"true"`/`"false"`.
    Boolean,
    /// JSON (`TEXT` in SQLite, `JSONB` in PostgreSQL).
    Json,
    /// A point in time (`TEXT` as RFC 3339 in SQLite, `TIMESTAMPTZ` in PostgreSQL), from
    /// milliseconds since the epoch or an RFC 3339 string.
    Timestamptz,
}

/// One declared column: the field it reads and its type.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// Just the field; the type follows from it.
    Field(FieldPath),
    /// The field and a type.
    Typed {
        /// The message field.
        field: FieldPath,
        /// The column's type (default: follows from the field).
        #[serde(rename = "type")]
        kind: Option<ColumnType>,
    },
}

/// Columns in the order written in the flow file.
#[derive(Clone, Debug, Default)]
pub struct Columns(pub Vec<(String, ColumnSpec)>);

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of column names to message fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut out = Vec::new();
                while let Some((name, spec)) = map.next_entry::<String, ColumnSpec>()? {
                    out.push((name, spec));
                }
                Ok(Columns(out))
            }
        }
        d.deserialize_map(Ordered)
    }
}

impl JsonSchema for Columns {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SqlColumns".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let spec = generator.subschema_for::<ColumnSpec>();
        schemars::json_schema!({
            "type": "object",
            "description": "Column name -> message field, or { field, type }",
            "additionalProperties": spec,
        })
    }
}

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

fn backend_of(url: Option<&str>) -> Option<Backend> {
    match url {
        None => Some(Backend::Sqlite),
        Some(u) if u.starts_with("sqlite:") => Some(Backend::Sqlite),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Some(Backend::Postgres)
        }
        Some(_) => None,
    }
}

/// Whether `name` is a plain SQL identifier: letters, digits and `_`, not starting with
/// a digit, at most 63 bytes (PostgreSQL's limit). Nothing else is ever put into SQL.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SqlOutConfig {
    fn columns(&self) -> Vec<(String, ColumnSpec)> {
        match &self.columns {
            Some(columns) => columns.0.clone(),
            None => vec![
                ("ts".into(), ColumnSpec::Field(FieldPath::Timestamp)),
                ("topic".into(), ColumnSpec::Field(FieldPath::Topic)),
                ("payload".into(), ColumnSpec::Field(FieldPath::payload())),
            ],
        }
    }
}

/// The type a column gets when none is written.
fn implied_type(field: &FieldPath, backend: Backend) -> Option<ColumnType> {
    match field {
        FieldPath::Timestamp | FieldPath::Id => Some(ColumnType::Integer),
        FieldPath::Topic | FieldPath::Header(_) => Some(ColumnType::Text),
        FieldPath::Payload(steps) if steps.is_empty() => Some(ColumnType::Json),
        FieldPath::Payload(_) => (backend == Backend::Sqlite).then_some(ColumnType::Auto),
    }
}

impl Config for SqlOutConfig {
    const TYPE: &'static str = "sql.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str =
        "Writes messages as rows into SQLite (default, in the data directory) or PostgreSQL";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let backend = backend_of(self.url.as_deref());
        if backend.is_none() {
            issues.push(ConfigIssue::new(
                "url",
                "use `sqlite://PATH` or `postgres://USER@HOST/DB`, or leave `url` out for the SQLite file in the data directory",
            ));
        }
        if !is_identifier(&self.table) {
            issues.push(ConfigIssue::new(
                "table",
                format!(
                    "`{}` is not a plain table name: use letters, digits and `_` (not starting with a digit, at most 63)",
                    self.table
                ),
            ));
        }
        let columns = self.columns();
        if columns.is_empty() {
            issues.push(ConfigIssue::new(
                "columns",
                "declare at least one column, e.g. { ts: timestamp, w: payload.w }",
            ));
        }
        for (name, spec) in &columns {
            let path = format!("columns.{name}");
            if !is_identifier(name) {
                issues.push(ConfigIssue::new(
                    path.clone(),
                    format!("`{name}` is not a plain column name: use letters, digits and `_`"),
                ));
            }
            let (field, kind) = match spec {
                ColumnSpec::Field(field) => (field, None),
                ColumnSpec::Typed { field, kind } => (field, *kind),
            };
            if let Some(backend) = backend {
                match kind.or_else(|| implied_type(field, backend)) {
                    None => issues.push(ConfigIssue::new(
                        path,
                        format!(
                            "PostgreSQL needs a type for `{field}`: write {{ field: {field}, type: real }} (text, integer, real, boolean, json or timestamptz)"
                        ),
                    )),
                    Some(ColumnType::Auto) if backend == Backend::Postgres => {
                        issues.push(ConfigIssue::new(
                            format!("{path}.type"),
                            "`auto` is for SQLite; PostgreSQL needs text, integer, real, boolean, json or timestamptz",
                        ));
                    }
                    _ => {}
                }
            }
        }
        for (i, key) in self.upsert.iter().enumerate() {
            if !columns.iter().any(|(name, _)| name == key) {
                issues.push(ConfigIssue::new(
                    format!("upsert[{i}]"),
                    format!("`{key}` is not one of the declared columns"),
                ));
            }
        }
        if self.batch.rows == 0 || self.batch.rows > 10_000 {
            issues.push(ConfigIssue::new(
                "batch.rows",
                "`rows` must be between 1 and 10000",
            ));
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let backend = backend_of(self.url.as_deref()).unwrap_or(Backend::Sqlite);
        let columns: Vec<Column> = self
            .columns()
            .into_iter()
            .map(|(name, spec)| {
                let (field, kind) = match spec {
                    ColumnSpec::Field(field) => (field, None),
                    ColumnSpec::Typed { field, kind } => (field, kind),
                };
                let kind = kind
                    .or_else(|| implied_type(&field, backend))
                    .unwrap_or(ColumnType::Text);
                Column { name, field, kind }
            })
            .collect();
        let target = match (backend, &self.url) {
            (Backend::Sqlite, url) => {
                let path = url
                    .as_deref()
                    .map(|u| {
                        u.trim_start_matches("sqlite://")
                            .trim_start_matches("sqlite:")
                    })
                    .filter(|p| !p.is_empty())
                    .unwrap_or(DEFAULT_SQLITE_FILE);
                Target::Sqlite(cx.data_dir.join(path))
            }
            (Backend::Postgres, url) => {
                let url = url.clone().unwrap_or_default();
                let options = PgConnectOptions::from_str(&url).map_err(|e| {
                    vec![ConfigIssue::new(
                        "url",
                        format!("not a PostgreSQL URL: {}", redact(&e.to_string(), &url)),
                    )]
                })?;
                Target::Postgres(Box::new(options))
            }
        };
        let upsert: Vec<usize> = self
            .upsert
            .iter()
            .filter_map(|key| columns.iter().position(|c| &c.name == key))
            .collect();
        let statements = Statements::new(backend, &self.table, &columns, &upsert);
        let settings = Arc::new(Settings {
            target,
            columns,
            upsert,
            statements,
            rows: self.batch.rows,
            interval: self.batch.interval.get(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

/// Removes a URL's text from an error message, so a password in it is never logged.
fn redact(message: &str, url: &str) -> String {
    if url.is_empty() {
        message.to_string()
    } else {
        message.replace(url, "<url>")
    }
}

/// Where rows go.
enum Target {
    /// An SQLite file (created if missing, WAL mode).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server.
    Postgres(Box<PgConnectOptions>),
}

/// A resolved column.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    field: FieldPath,
    kind: ColumnType,
}

/// The SQL text, built once from validated identifiers.
struct Statements {
    backend: Backend,
    create: String,
    /// `INSERT INTO t (a, b) VALUES ` without the rows.
    insert_head: String,
    /// ` ON CONFLICT ... ` or empty.
    insert_tail: String,
    /// Each column's placeholder with its cast, `{}` standing for the parameter number.
    placeholders: Vec<(&'static str, &'static str)>,
}

fn quoted(name: &str) -> String {
    // Identifiers are validated (letters, digits, `_`); quoting only keeps reserved words
    // such as `user` or `timestamp` usable.
    format!("\"{name}\"")
}

impl Statements {
    fn new(backend: Backend, table: &str, columns: &[Column], upsert: &[usize]) -> Statements {
        let sql_type = |kind: ColumnType| match (backend, kind) {
            (_, ColumnType::Auto) => "",
            (_, ColumnType::Text) => " TEXT",
            (Backend::Sqlite, ColumnType::Integer) => " INTEGER",
            (Backend::Postgres, ColumnType::Integer) => " BIGINT",
            (Backend::Sqlite, ColumnType::Real) => " REAL",
            (Backend::Postgres, ColumnType::Real) => " DOUBLE PRECISION",
            (_, ColumnType::Boolean) => " BOOLEAN",
            (Backend::Sqlite, ColumnType::Json) => " TEXT",
            (Backend::Postgres, ColumnType::Json) => " JSONB",
            (Backend::Sqlite, ColumnType::Timestamptz) => " TEXT",
            (Backend::Postgres, ColumnType::Timestamptz) => " TIMESTAMPTZ",
        };
        let mut defs: Vec<String> = columns
            .iter()
            .map(|c| format!("{}{}", quoted(&c.name), sql_type(c.kind)))
            .collect();
        let keys: Vec<String> = upsert.iter().map(|&i| quoted(&columns[i].name)).collect();
        if !keys.is_empty() {
            defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            quoted(table),
            defs.join(", ")
        );
        let names: Vec<String> = columns.iter().map(|c| quoted(&c.name)).collect();
        let insert_head = format!(
            "INSERT INTO {} ({}) VALUES ",
            quoted(table),
            names.join(", ")
        );
        let insert_tail = if keys.is_empty() {
            String::new()
        } else {
            let updates: Vec<String> = columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !upsert.contains(i))
                .map(|(_, c)| format!("{0} = excluded.{0}", quoted(&c.name)))
                .collect();
            if updates.is_empty() {
                format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", "))
            } else {
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    keys.join(", "),
                    updates.join(", ")
                )
            }
        };
        let placeholders = columns
            .iter()
            .map(|c| match (backend, c.kind) {
                (Backend::Postgres, ColumnType::Json) => ("$", "::jsonb"),
                (Backend::Postgres, ColumnType::Timestamptz) => ("$", "::timestamptz"),
                (Backend::Postgres, _) => ("$", ""),
                (Backend::Sqlite, _) => ("?", ""),
            })
            .collect();
        Statements {
            backend,
            create,
            insert_head,
            insert_tail,
            placeholders,
        }
    }

    /// Most rows in one statement: SQLite allows 32766 parameters, PostgreSQL 65535.
    fn rows_per_statement(&self, columns: usize) -> usize {
        let limit = match self.backend {
            Backend::Sqlite => 32_000,
            Backend::Postgres => 65_000,
        };
        (limit / columns.max(1)).max(1)
    }

    /// The INSERT for `rows` rows.
    fn insert(&self, rows: usize) -> String {
        let mut sql =
            String::with_capacity(self.insert_head.len() + rows * 8 * self.placeholders.len());
        sql.push_str(&self.insert_head);
        let mut n = 1;
        for row in 0..rows {
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (i, (mark, cast)) in self.placeholders.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(mark);
                if *mark == "$" {
                    sql.push_str(&n.to_string());
                }
                sql.push_str(cast);
                n += 1;
            }
            sql.push(')');
        }
        sql.push_str(&self.insert_tail);
        sql
    }
}

struct Settings {
    target: Target,
    columns: Vec<Column>,
    /// Indexes of the upsert key columns.
    upsert: Vec<usize>,
    statements: Statements,
    rows: usize,
    interval: Duration,
}

/// One value bound to a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// SQL NULL, typed by its column.
    Null(ColumnType),
    /// An integer.
    Int(i64),
    /// A double.
    Real(f64),
    /// Text (also JSON and timestamps, cast in the SQL where PostgreSQL needs it).
    Text(String),
    /// A boolean.
    Bool(bool),
}

/// The row of `msg`, or why it cannot be one (the message then goes to the error port).
fn row_of(columns: &[Column], msg: &Msg) -> Result<Vec<Cell>, String> {
    let view = MsgView::new(msg);
    columns
        .iter()
        .map(|column| {
            let whole_payload = matches!(&column.field, FieldPath::Payload(s) if s.is_empty());
            if whole_payload && matches!(column.kind, ColumnType::Json | ColumnType::Text) {
                // The payload as it came, when it is JSON already: no parse, no copy of a
                // tree (a cheap validating skim decides).
                if let Some(text) = msg.payload_str()
                    && (column.kind == ColumnType::Text
                        || serde_json::from_str::<IgnoredAny>(text).is_ok())
                {
                    return Ok(Cell::Text(text.to_string()));
                }
            }
            match view.get(&column.field) {
                None | Some(std::borrow::Cow::Borrowed(Value::Null)) => Ok(Cell::Null(column.kind)),
                Some(value) => convert(&value, column.kind)
                    .map_err(|e| format!("column `{}` ({}): {e}", column.name, column.field)),
            }
        })
        .collect()
}

/// A JSON value as a cell of `kind`.
pub fn convert(value: &Value, kind: ColumnType) -> Result<Cell, String> {
    if value.is_null() {
        return Ok(Cell::Null(kind));
    }
    match kind {
        ColumnType::Auto => Ok(match value {
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Cell::Int(i),
                None => Cell::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Cell::Text(s.clone()),
            other => Cell::Text(other.to_string()),
        }),
        ColumnType::Text => Ok(Cell::Text(to_text(value).into_owned())),
        ColumnType::Json => Ok(Cell::Text(value.to_string())),
        ColumnType::Integer => {
            if let Some(i) = value.as_i64() {
                return Ok(Cell::Int(i));
            }
            match to_number(value) {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Cell::Int(f as i64)),
                _ => Err(format!("{value} is not an integer")),
            }
        }
        ColumnType::Real => to_number(value)
            .map(Cell::Real)
            .ok_or_else(|| format!("{value} is not a number")),
        ColumnType::Boolean => match value {
            Value::Bool(b) => Ok(Cell::Bool(*b)),
            Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Cell::Bool(false)),
            Value::Number(n) if n.as_f64() == Some(1.0) => Ok(Cell::Bool(true)),
            Value::String(s) if s == "true" => Ok(Cell::Bool(true)),
            Value::String(s) if s == "false" => Ok(Cell::Bool(false)),
            _ => Err(format!("{value} is not a boolean")),
        },
        ColumnType::Timestamptz => match value {
            Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| Cell::Text(t.to_rfc3339()))
                .map_err(|_| format!("{value} is not an RFC 3339 time")),
            other => {
                let ms = to_number(other)
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| format!("{value} is not a time"))?;
                chrono::DateTime::from_timestamp_millis(ms as i64)
                    .map(|t| Cell::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
                    .ok_or_else(|| format!("{value} is out of range for a time"))
            }
        },
    }
}

/// The open database.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How a write failed.
enum WriteError {
    /// The database refused a row (constraint, type): split the batch to find it.
    Row(String),
    /// The database is unreachable or busy: retry the same batch later.
    Unavailable(String),
}

/// Sorts an sqlx error: refusals of the data are `Row`, everything else (connection,
/// I/O, pool, server shutting down, disk full) is worth retrying.
fn classify(error: sqlx::Error) -> WriteError {
    let text = error.to_string();
    match &error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let data_error = match db.kind() {
                sqlx::error::ErrorKind::Other => {
                    if code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric()) {
                        // PostgreSQL SQLSTATE: 22 data exception, 23 integrity constraint,
                        // 21 cardinality, 42 syntax/undefined object (a table changed
                        // under us: every row fails and is reported, nothing hangs).
                        matches!(&code[..2], "21" | "22" | "23" | "42")
                    } else {
                        // SQLite (extended) result codes: the low byte is the primary
                        // code. 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH, 25 RANGE; 1 ERROR
                        // covers a missing column or table.
                        let primary = code.parse::<i64>().unwrap_or(0) & 0xff;
                        matches!(primary, 1 | 18 | 19 | 20 | 25)
                    }
                }
                _ => true,
            };
            if data_error {
                WriteError::Row(text)
            } else {
                WriteError::Unavailable(text)
            }
        }
        _ => WriteError::Unavailable(text),
    }
}

/// Binds `cells` to `query` in order; one macro because the two drivers' query types
/// differ only in their database parameter.
macro_rules! bind_all {
    ($query:expr, $rows:expr) => {{
        let mut query = $query;
        for row in $rows {
            for cell in row.iter() {
                query = match cell {
                    Cell::Int(i) => query.bind(*i),
                    Cell::Real(f) => query.bind(*f),
                    Cell::Text(s) => query.bind(s.as_str()),
                    Cell::Bool(b) => query.bind(*b),
                    Cell::Null(ColumnType::Integer) => query.bind(None::<i64>),
                    Cell::Null(ColumnType::Real) => query.bind(None::<f64>),
                    Cell::Null(ColumnType::Boolean) => query.bind(None::<bool>),
                    Cell::Null(_) => query.bind(None::<&str>),
                };
            }
        }
        query
    }};
}

impl Db {
    async fn open(settings: &Settings) -> Result<Db, sqlx::Error> {
        match &settings.target {
            Target::Sqlite(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a committed batch survives power loss too, which is what
                    // acknowledging it promises; WAL keeps that to one fsync per batch.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await?;
                Ok(Db::Sqlite(pool))
            }
            Target::Postgres(options) => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with((**options).clone())
                    .await?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(pool)
                .await
                .map(drop),
            Db::Postgres(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(pool)
                .await
                .map(drop),
        }
    }

    /// Inserts `rows` in one transaction, in statements of at most `per_statement` rows.
    async fn insert(
        &self,
        statements: &Statements,
        rows: &[&[Cell]],
        per_statement: usize,
    ) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(per_statement) {
                    let sql = AssertSqlSafe(statements.insert(chunk.len()));
                    bind_all!(sqlx::query(sql), chunk).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(per_statement) {
                    let sql = AssertSqlSafe(statements.insert(chunk.len()));
                    bind_all!(sqlx::query(sql), chunk).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
        }
    }

    async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Retry delays for an unreachable database: 100 ms doubling up to 30 s.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The run: collect a batch, write it (retrying while the database is away), repeat.
async fn run(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut writer = Writer {
        settings: settings.clone(),
        id: cx.id.clone(),
        clock: cx.clock.clone(),
        db: None,
        outage: None,
    };
    let mut batch: Vec<Msg> = Vec::with_capacity(settings.rows);
    loop {
        if inbox.recv_many(&mut batch, settings.rows).await == 0 {
            writer.close().await;
            return Ok(());
        }
        // Wait for more, up to `rows` or `interval` after the first message.
        let deadline = cx.clock.now() + settings.interval;
        while batch.len() < settings.rows {
            let room = settings.rows - batch.len();
            tokio::select! {
                n = inbox.recv_many(&mut batch, room) => {
                    if n == 0 { break; }
                }
                () = cx.clock.sleep_until(deadline) => break,
            }
        }
        cx.stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut rows = Vec::with_capacity(batch.len());
        let mut msgs = Vec::with_capacity(batch.len());
        for msg in batch.drain(..) {
            match row_of(&settings.columns, &msg) {
                Ok(row) => {
                    rows.push(row);
                    msgs.push(msg);
                }
                Err(reason) => cx.outputs.emit_error(msg, reason).await,
            }
        }
        if !settings.upsert.is_empty() {
            dedupe_keys(&settings.upsert, &mut rows, &mut msgs);
        }
        let refused = writer.write(&rows).await;
        let mut refused = refused.into_iter().peekable();
        for (i, msg) in msgs.into_iter().enumerate() {
            match refused.peek() {
                Some((index, _)) if *index == i => {
                    let (_, reason) = refused.next().unwrap_or_default();
                    cx.outputs.emit_error(msg, reason).await;
                }
                _ => msg.done(),
            }
        }
    }
}

/// Within one batch, keeps the last row of each upsert key: PostgreSQL refuses a
/// statement that updates one row twice, and the last value is what an upsert keeps
/// anyway. The earlier messages are done (their row was superseded).
fn dedupe_keys(keys: &[usize], rows: &mut Vec<Vec<Cell>>, msgs: &mut Vec<Msg>) {
    let key_of = |row: &[Cell]| -> String {
        keys.iter()
            .map(|&k| format!("{:?}", row[k]))
            .collect::<Vec<_>>()
            .join("\u{1f}")
    };
    let mut last: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        last.insert(key_of(row), i);
    }
    if last.len() == rows.len() {
        return;
    }
    let keep: Vec<bool> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| last.get(&key_of(row)) == Some(&i))
        .collect();
    let old_rows = std::mem::take(rows);
    let old_msgs = std::mem::take(msgs);
    for ((row, msg), keep) in old_rows.into_iter().zip(old_msgs).zip(keep) {
        if keep {
            rows.push(row);
            msgs.push(msg);
        } else {
            msg.done();
        }
    }
}

/// The connection and the outage state of one run.
struct Writer {
    settings: Arc<Settings>,
    id: NodeId,
    clock: crate::engine::Clock,
    db: Option<Db>,
    /// Since when the database has been unreachable (for one log line per outage).
    outage: Option<tokio::time::Instant>,
}

impl Writer {
    /// Writes `rows`; returns the rows the database refused (index, reason), in order.
    /// Does not return while the database is unreachable.
    async fn write(&mut self, rows: &[Vec<Cell>]) -> Vec<(usize, String)> {
        let mut refused = Vec::new();
        if rows.is_empty() {
            return refused;
        }
        let all: Vec<&[Cell]> = rows.iter().map(Vec::as_slice).collect();
        // Ranges still to write; a refused range is split in two until the bad rows
        // stand alone. Bounded: each bad row costs about log2(batch) transactions.
        let mut pending = vec![(0usize, all.len())];
        while let Some((start, end)) = pending.pop() {
            match self.write_range(&all[start..end]).await {
                Ok(()) => {}
                Err(reason) if end - start == 1 => refused.push((start, reason)),
                Err(_) => {
                    let mid = start + (end - start) / 2;
                    // Pushed in reverse so the earlier half is written first.
                    pending.push((mid, end));
                    pending.push((start, mid));
                }
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        refused
    }

    /// One transaction; retries until the database answers, returns a refusal.
    async fn write_range(&mut self, rows: &[&[Cell]]) -> Result<(), String> {
        let mut delay = FIRST_RETRY;
        loop {
            let result = match self.connected().await {
                Ok(db) => {
                    let per_statement = self
                        .settings
                        .statements
                        .rows_per_statement(self.settings.columns.len());
                    db.insert(&self.settings.statements, rows, per_statement)
                        .await
                        .map_err(classify)
                }
                Err(e) => Err(WriteError::Unavailable(e)),
            };
            match result {
                Ok(()) => {
                    self.recovered();
                    return Ok(());
                }
                Err(WriteError::Row(reason)) => {
                    self.recovered();
                    return Err(reason);
                }
                Err(WriteError::Unavailable(reason)) => {
                    if self.outage.is_none() {
                        self.outage = Some(self.clock.now());
                        tracing::warn!(node = %self.id, "database unavailable, holding {} rows and retrying: {reason}", rows.len());
                    }
                    // A broken connection is dropped and opened again.
                    if let Some(db) = self.db.take() {
                        db.close().await;
                    }
                    self.clock.sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.outage.take() {
            let seconds = self.clock.now().duration_since(since).as_secs_f64();
            tracing::info!(node = %self.id, "database available again after {seconds:.1} s");
        }
    }

    /// The open database, connecting and creating the table first if needed.
    async fn connected(&mut self) -> Result<Db, String> {
        if self.db.is_none() {
            let db = Db::open(&self.settings).await.map_err(|e| e.to_string())?;
            if let Err(e) = db.execute(&self.settings.statements.create).await {
                db.close().await;
                return Err(format!("cannot create the table: {e}"));
            }
            self.db = Some(db);
        }
        self.db.clone().ok_or_else(|| "not connected".to_string())
    }

    async fn close(&mut self) {
        if let Some(db) = self.db.take() {
            db.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome};
    use sqlx::Row;

    fn tracked(payload: &str, outcomes: &mpsc::UnboundedSender<Outcome>) -> Msg {
        let tx = outcomes.clone();
        let mut msg = Msg::tracked(
            "home/meter",
            payload.to_string(),
            1_700_000_000_000,
            move |o| {
                let _ = tx.send(o);
            },
        );
        msg.headers_mut().insert("qos".into(), "1".into());
        msg
    }

    async fn sqlite(path: &std::path::Path) -> SqlitePool {
        SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
            .await
            .unwrap()
    }

    use tokio::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_land_with_the_declared_columns() {
        let dir = tempfile::tempdir().unwrap();
        let options = "table: readings\ncolumns:\n  ts: timestamp\n  topic: topic\n  w: { field: payload.w, type: real }\n  meter: payload.id\n  raw: payload\n  qos: headers.qos\n  at: { field: timestamp, type: timestamptz }\nbatch: { rows: 3, interval: 20ms }\n";
        let mut harness =
            NodeHarness::start_in("sql.out", options, Clock::system(), dir.path().into()).unwrap();
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        for n in 0..7 {
            harness
                .send(tracked(&format!(r#"{{"id":"house","w":{n}.5}}"#), &tx))
                .await;
        }
        harness.send(tracked("not json", &tx)).await;
        for _ in 0..8 {
            assert_eq!(outcomes.recv().await, Some(Outcome::Done));
        }
        harness.close_input();
        let pool = sqlite(&dir.path().join(DEFAULT_SQLITE_FILE)).await;
        let rows =
            sqlx::query("SELECT ts, topic, w, meter, raw, qos, at FROM readings ORDER BY rowid")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 8);
        let first = &rows[0];
        assert_eq!(first.get::<i64, _>("ts"), 1_700_000_000_000);
        assert_eq!(first.get::<String, _>("topic"), "home/meter");
        assert_eq!(first.get::<f64, _>("w"), 0.5);
        assert_eq!(first.get::<String, _>("meter"), "house");
        assert_eq!(first.get::<String, _>("raw"), r#"{"id":"house","w":0.5}"#);
        assert_eq!(first.get::<String, _>("qos"), "1");
        assert_eq!(first.get::<String, _>("at"), "2023-11-14T22:13:20.000Z");
        assert_eq!(rows[6].get::<f64, _>("w"), 6.5);
        // A payload that is not JSON: JSON text of the string, no fields.
        let last = &rows[7];
        assert_eq!(last.get::<String, _>("raw"), r#""not json""#);
        assert_eq!(last.get::<Option<f64>, _>("w"), None);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        harness.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_row_goes_alone_to_the_error_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE m (w REAL NOT NULL CHECK (w >= 0))")
            .execute(&pool)
            .await
            .unwrap();
        let options = format!(
            "url: sqlite://{}\ntable: m\ncolumns: {{ w: payload.w }}\nbatch: {{ rows: 10, interval: 50ms }}\n",
            path.display()
        );
        let mut harness =
            NodeHarness::start_in("sql.out", &options, Clock::system(), dir.path().into()).unwrap();
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        for w in [1, 2, -3, 4, 5, -6, 7] {
            harness.send(tracked(&format!(r#"{{"w":{w}}}"#), &tx)).await;
        }
        let mut failed = Vec::new();
        for _ in 0..2 {
            let msg = harness.recv("error").await.unwrap();
            failed.push(msg.payload_str().unwrap().to_string());
            assert!(
                msg.headers["error"].contains("CHECK constraint failed"),
                "{:?}",
                msg.headers
            );
            msg.done();
        }
        assert_eq!(failed, [r#"{"w":-3}"#, r#"{"w":-6}"#]);
        for _ in 0..7 {
            assert_eq!(outcomes.recv().await, Some(Outcome::Done));
        }
        let written: Vec<f64> = sqlx::query_scalar("SELECT w FROM m ORDER BY rowid")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(written, [1.0, 2.0, 4.0, 5.0, 7.0]);
        harness.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upserts_keep_one_row_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let options = "table: latest\ncolumns: { sensor: { field: payload.s, type: text }, v: payload.v }\nupsert: [sensor]\nbatch: { rows: 4, interval: 10ms }\n";
        let harness =
            NodeHarness::start_in("sql.out", options, Clock::system(), dir.path().into()).unwrap();
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        // Duplicates inside one batch and across batches.
        for (s, v) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5), ("a", 6)] {
            harness
                .send(tracked(&format!(r#"{{"s":"{s}","v":{v}}}"#), &tx))
                .await;
        }
        for _ in 0..6 {
            assert_eq!(outcomes.recv().await, Some(Outcome::Done));
        }
        let pool = sqlite(&dir.path().join(DEFAULT_SQLITE_FILE)).await;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT sensor, v FROM latest ORDER BY sensor")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows, [("a".into(), 6), ("b".into(), 5), ("c".into(), 4)]);
        harness.shutdown().await;
    }

    fn issues(options: &str) -> String {
        match NodeHarness::start("sql.out", options, Clock::system()) {
            Ok(_) => String::new(),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn identifiers_and_types_are_checked() {
        assert!(issues("table: \"x; drop table y\"").contains("not a plain table name"));
        assert!(
            issues("table: t\ncolumns: { \"a b\": topic }").contains("not a plain column name")
        );
        assert!(
            issues("table: t\nupsert: [nope]")
                .contains("`nope` is not one of the declared columns")
        );
        assert!(
            issues("url: postgres://u@h/db\ntable: t\ncolumns: { w: payload.w }")
                .contains("PostgreSQL needs a type for `payload.w`")
        );
        assert!(issues("url: mysql://h/db\ntable: t").contains("use `sqlite://PATH`"));
        assert!(issues("table: t\nbatch: { rows: 0 }").contains("between 1 and 10000"));
        assert!(issues("table: t\ncolumns: { w: payload.w }").is_empty());
    }

    #[test]
    fn statements_bind_every_value_as_a_parameter() {
        let columns = vec![
            Column {
                name: "k".into(),
                field: "payload.k".parse().unwrap(),
                kind: ColumnType::Text,
            },
            Column {
                name: "doc".into(),
                field: FieldPath::payload(),
                kind: ColumnType::Json,
            },
            Column {
                name: "at".into(),
                field: FieldPath::Timestamp,
                kind: ColumnType::Timestamptz,
            },
        ];
        let pg = Statements::new(Backend::Postgres, "t", &columns, &[0]);
        assert_eq!(
            pg.create,
            r#"CREATE TABLE IF NOT EXISTS "t" ("k" TEXT, "doc" JSONB, "at" TIMESTAMPTZ, PRIMARY KEY ("k"))"#
        );
        assert_eq!(
            pg.insert(2),
            r#"INSERT INTO "t" ("k", "doc", "at") VALUES ($1, $2::jsonb, $3::timestamptz), ($4, $5::jsonb, $6::timestamptz) ON CONFLICT ("k") DO UPDATE SET "doc" = excluded."doc", "at" = excluded."at""#
        );
        let lite = Statements::new(Backend::Sqlite, "t", &columns, &[]);
        assert_eq!(
            lite.insert(1),
            r#"INSERT INTO "t" ("k", "doc", "at") VALUES (?, ?, ?)"#
        );
    }

    #[test]
    fn values_convert_by_column_type() {
        use serde_json::json;
        assert_eq!(
            convert(&json!("21"), ColumnType::Integer),
            Ok(Cell::Int(21))
        );
        assert_eq!(convert(&json!(2.0), ColumnType::Integer), Ok(Cell::Int(2)));
        assert!(convert(&json!(2.5), ColumnType::Integer).is_err());
        assert_eq!(
            convert(&json!("2.5"), ColumnType::Real),
            Ok(Cell::Real(2.5))
        );
        assert!(convert(&json!("x"), ColumnType::Real).is_err());
        assert_eq!(
            convert(&json!(1), ColumnType::Boolean),
            Ok(Cell::Bool(true))
        );
        assert_eq!(
            convert(&json!({"a":1}), ColumnType::Text),
            Ok(Cell::Text(r#"{"a":1}"#.into()))
        );
        assert_eq!(
            convert(&json!(null), ColumnType::Real),
            Ok(Cell::Null(ColumnType::Real))
        );
        assert_eq!(convert(&json!(7), ColumnType::Auto), Ok(Cell::Int(7)));
        assert_eq!(
            convert(&json!(0), ColumnType::Timestamptz),
            Ok(Cell::Text("1970-01-01T00:00:00.000Z".into()))
        );
    }
}
