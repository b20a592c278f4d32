//! PostgreSQL as the satellite's database, shared by several satellite
//! processes.
//!
//! Each [`Table`] is a SQL table `kv_<name> (k BYTEA PRIMARY KEY, v BYTEA)`;
//! a batch is one READ COMMITTED transaction that locks the rows it
//! expects (its [`Op::Expect`]s) before its writes and commits only if they
//! held, in one pipelined round trip (see [`Plan`]); it is tried again when
//! the database reports a deadlock or a serialization failure. The SQL
//! stays within what CockroachDB and YugabyteDB also accept: `ON
//! CONFLICT`, `UNNEST`, `= ANY`, `FOR UPDATE` / `FOR SHARE`, no extensions.
//!
//! [`Kv`] is synchronous (the services call it as they call RocksDB), so
//! the connection pool lives on a small runtime of its own and each call
//! waits for its answer: that works from any thread, inside or outside
//! another runtime.
//!
//! The schema is versioned: [`PgKv::connect`] applies the migrations this
//! build knows and refuses a database that a newer satellite migrated.
//!
//! [`Cluster`] starts a throwaway PostgreSQL server (tests, `testnet run
//! --database postgres`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::db::{DbError, Kv, Op, Pairs, Table, split_batch};

/// Connections each satellite process keeps to the database.
const POOL_SIZE: usize = 16;
/// Times a batch is tried again after a serialization failure.
const RETRIES: u32 = 16;

/// The schema, one entry per version, applied in order. Never edit a
/// released entry: add one.
fn migrations() -> Vec<(i64, String)> {
    let tables: String = Table::ALL
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);\n",
                sql_table(*t)
            )
        })
        .collect();
    vec![(1, tables)]
}

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    migrations().last().map_or(0, |(v, _)| *v)
}

fn sql_table(t: Table) -> String {
    format!("kv_{}", t.name())
}

/// Counts one statement sent (`loam_satellite_db_statements_total`), by
/// table and kind: what a request costs in round trips.
fn count(table: Table, statement: &'static str) {
    metrics::counter!(
        "loam_satellite_db_statements_total",
        "table" => table.name(),
        "statement" => statement
    )
    .increment(1);
}

/// The satellite's tables on PostgreSQL.
pub struct PgKv {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKv").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> DbError {
    DbError::Backend(e.to_string())
}

/// Whether a failed statement is worth running again: the database gave
/// up on it to keep transactions serializable, or two collided on a lock.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

impl PgKv {
    /// Connects to `url` (`postgres://user@host:port/db`), creates or
    /// upgrades the schema, and refuses a schema newer than this build.
    pub fn connect(url: &str) -> Result<Self, DbError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DbError::Backend(format!("bad database address {url:?}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loam-postgres")
            .enable_all()
            .build()
            .map_err(backend)?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _enter = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .build()
                .map_err(backend)?
        };
        let kv = Self {
            pool,
            runtime: Some(runtime),
        };
        let pool = kv.pool.clone();
        kv.call(async move { migrate(&pool).await })?;
        Ok(kv)
    }

    /// Runs `fut` on the pool's runtime and waits for it.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, DbError>> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv()
            .map_err(|_| DbError::Backend("the database task ended without an answer".into()))?
    }
}

impl Drop for PgKv {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, DbError> {
    pool.get().await.map_err(|e| {
        DbError::Backend(match e {
            deadpool_postgres::PoolError::Backend(e) => {
                format!("cannot connect to the database: {}", describe(&e))
            }
            e => format!("cannot connect to the database: {e}"),
        })
    })
}

async fn migrate(pool: &Pool) -> Result<(), DbError> {
    let mut c = client(pool).await?;
    let mut attempt = 0;
    loop {
        match migrate_once(&mut c).await {
            Ok(()) => return Ok(()),
            // Two processes starting at once race to create the tables.
            Err(MigrateError::Db(e)) if retryable(&e) && attempt < RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(MigrateError::Db(e)) => {
                return Err(DbError::Backend(format!(
                    "schema migration failed: {}",
                    describe(&e)
                )));
            }
            Err(MigrateError::Newer(v)) => {
                return Err(DbError::Backend(format!(
                    "the database's schema is version {v}, newer than this satellite knows ({}); \
                     run a satellite at least as new as the one that migrated it",
                    schema_version()
                )));
            }
        }
    }
}

enum MigrateError {
    Db(tokio_postgres::Error),
    Newer(i64),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

async fn migrate_once(c: &mut deadpool_postgres::Object) -> Result<(), MigrateError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS loam_schema \
         (version BIGINT PRIMARY KEY, applied_unix_ms BIGINT NOT NULL)",
    )
    .await?;
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM loam_schema", &[])
        .await?
        .get(0);
    if current > schema_version() {
        return Err(MigrateError::Newer(current));
    }
    for (version, sql) in migrations() {
        if version <= current {
            continue;
        }
        tx.batch_execute(&sql).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        tx.execute(
            "INSERT INTO loam_schema (version, applied_unix_ms) VALUES ($1, $2)",
            &[&version, &now],
        )
        .await?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// The first key after every key that starts with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Kv for PgKv {
    fn shared(&self) -> bool {
        true
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        let pool = self.pool.clone();
        let key = key.to_vec();
        self.call(async move {
            let c = client(&pool).await?;
            count(table, "get");
            let sql = format!("SELECT v FROM {} WHERE k = $1", sql_table(table));
            let stmt = c
                .prepare_cached(&sql)
                .await
                .map_err(|e| backend(describe(&e)))?;
            let row = c
                .query_opt(&stmt, &[&key])
                .await
                .map_err(|e| backend(describe(&e)))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), DbError> {
        if ops.is_empty() {
            return Ok(());
        }
        let pool = self.pool.clone();
        self.call(async move {
            let plan = Plan::new(ops);
            let mut c = client(&pool).await?;
            let mut attempt = 0;
            loop {
                match plan.try_once(&mut c).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => return Err(DbError::Conflict),
                    Err(e) if retryable(&e) => {
                        if attempt >= RETRIES {
                            return Err(DbError::Conflict);
                        }
                        attempt += 1;
                        metrics::counter!("loam_satellite_db_retries_total").increment(1);
                        let jitter = rand::random::<u64>() % (200 * u64::from(attempt));
                        tokio::time::sleep(Duration::from_micros(jitter)).await;
                    }
                    Err(e) => return Err(backend(describe(&e))),
                }
            }
        })
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Pairs, DbError> {
        let pool = self.pool.clone();
        let from = if start > prefix { start } else { prefix }.to_vec();
        let end = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async move {
            let c = client(&pool).await?;
            count(table, "scan");
            // Without an upper bound when the prefix has no successor
            // (empty, or all 0xff bytes).
            let bound = if end.is_some() { "AND k < $3 " } else { "" };
            let sql = format!(
                "SELECT k, v FROM {} WHERE k >= $1 {bound}ORDER BY k LIMIT $2",
                sql_table(table)
            );
            let stmt = c
                .prepare_cached(&sql)
                .await
                .map_err(|e| backend(describe(&e)))?;
            let rows = match &end {
                Some(end) => c.query(&stmt, &[&from, &limit, end]).await,
                None => c.query(&stmt, &[&from, &limit]).await,
            }
            .map_err(|e| backend(describe(&e)))?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }
}

/// Keys and values by table.
type Rows = BTreeMap<Table, (Vec<Vec<u8>>, Vec<Vec<u8>>)>;

/// What one batch does in PostgreSQL, worked out once and tried until it
/// commits.
///
/// A batch runs as one READ COMMITTED transaction that locks what it
/// expects before it writes, so that no other batch can change those rows
/// between the check and the commit (two-phase locking on exactly the
/// batch's keys, rather than SERIALIZABLE's predicate locks, which
/// conflict whenever two batches touch the same index page: every commit
/// into one bucket did):
/// - a row expected present is read `FOR UPDATE` when the batch writes
///   it, `FOR SHARE` when it only expects it (a bucket: commits into it
///   share it, its deletion waits for them); a writer that got there
///   first makes the read wait and then see what it wrote;
/// - a row expected absent that the batch puts is inserted with `ON
///   CONFLICT DO NOTHING`: a row there, or one another transaction is
///   inserting and then commits, makes it insert nothing, which fails the
///   expectation;
/// - a row expected absent that the batch does not put is held the same
///   way by an empty row the transaction inserts and deletes again, so
///   that nobody creates it meanwhile.
///
/// Expectations are taken in key order, and every statement of a try goes
/// in one pipelined round trip; the try commits only if every expectation
/// held, and rolls back otherwise.
struct Plan {
    /// Expected present: table, key, value, and whether the batch writes
    /// the row; in key order.
    held: Vec<(Table, Vec<u8>, Vec<u8>, bool)>,
    /// Expected absent and put: inserted only if still absent.
    creates: Rows,
    /// Expected absent and not put: guarded for the transaction.
    guards: BTreeMap<Table, Vec<Vec<u8>>>,
    /// Two expectations of one key that differ: the batch cannot apply.
    contradictory: bool,
    upserts: Rows,
    deletes: BTreeMap<Table, Vec<Vec<u8>>>,
}

impl Plan {
    fn new(ops: Vec<Op>) -> Self {
        let (expects, mut changes) = split_batch(ops);
        let mut wanted: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        let mut contradictory = false;
        for (t, k, v) in expects {
            match wanted.entry((t, k)) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    contradictory |= *e.get() != v;
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
        let mut plan = Plan {
            held: Vec::new(),
            creates: Rows::new(),
            guards: BTreeMap::new(),
            contradictory,
            upserts: Rows::new(),
            deletes: BTreeMap::new(),
        };
        for ((t, k), want) in wanted {
            match want {
                Some(v) => {
                    let writes = changes.contains_key(&(t, k.clone()));
                    plan.held.push((t, k, v, writes));
                }
                None => match changes.remove(&(t, k.clone())) {
                    Some(Some(v)) => {
                        let e = plan.creates.entry(t).or_default();
                        e.0.push(k);
                        e.1.push(v);
                    }
                    // Expected absent and deleted: the delete has nothing
                    // to do, the guard goes with it.
                    Some(None) | None => plan.guards.entry(t).or_default().push(k),
                },
            }
        }
        for ((t, k), v) in changes {
            match v {
                Some(v) => {
                    let e = plan.upserts.entry(t).or_default();
                    e.0.push(k);
                    e.1.push(v);
                }
                None => plan.deletes.entry(t).or_default().push(k),
            }
        }
        plan
    }

    /// One try: `Ok(false)` when an expectation did not hold.
    async fn try_once(
        &self,
        c: &mut deadpool_postgres::Object,
    ) -> Result<bool, tokio_postgres::Error> {
        if self.contradictory {
            return Ok(false);
        }
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        // Every statement, in the order it runs, with what it must return
        // for the batch's expectations to hold.
        let mut stmts = Vec::new();
        let mut params: Vec<Vec<&(dyn ToSql + Sync)>> = Vec::new();
        let mut checks: Vec<Check<'_>> = Vec::new();
        for (t, k, v, writes) in &self.held {
            count(*t, "expect");
            let lock = if *writes { "UPDATE" } else { "SHARE" };
            let sql = format!("SELECT v FROM {} WHERE k = $1 FOR {lock}", sql_table(*t));
            stmts.push(tx.prepare_cached(&sql).await?);
            params.push(vec![k as _]);
            checks.push(Check::Value(v));
        }
        let insert = |t: Table| {
            format!(
                "INSERT INTO {} (k, v) SELECT * FROM UNNEST($1::BYTEA[], $2::BYTEA[]) \
                 ON CONFLICT (k) DO NOTHING RETURNING k",
                sql_table(t)
            )
        };
        for (t, (keys, values)) in &self.creates {
            count(*t, "create");
            stmts.push(tx.prepare_cached(&insert(*t)).await?);
            params.push(vec![keys as _, values as _]);
            checks.push(Check::Rows(keys.len()));
        }
        let empties: BTreeMap<Table, Vec<Vec<u8>>> = self
            .guards
            .iter()
            .map(|(t, keys)| (*t, vec![Vec::new(); keys.len()]))
            .collect();
        for (t, keys) in &self.guards {
            count(*t, "guard");
            stmts.push(tx.prepare_cached(&insert(*t)).await?);
            params.push(vec![keys as _, &empties[t] as _]);
            checks.push(Check::Rows(keys.len()));
        }
        for (t, (keys, values)) in &self.upserts {
            count(*t, "put");
            let sql = format!(
                "INSERT INTO {} (k, v) SELECT * FROM UNNEST($1::BYTEA[], $2::BYTEA[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                sql_table(*t)
            );
            stmts.push(tx.prepare_cached(&sql).await?);
            params.push(vec![keys as _, values as _]);
            checks.push(Check::None);
        }
        let delete = |t: Table| format!("DELETE FROM {} WHERE k = ANY($1)", sql_table(t));
        for (t, keys) in self.deletes.iter().chain(&self.guards) {
            count(*t, "delete");
            stmts.push(tx.prepare_cached(&delete(*t)).await?);
            params.push(vec![keys as _]);
            checks.push(Check::None);
        }
        let results = futures::future::try_join_all(
            stmts
                .iter()
                .zip(&params)
                .map(|(stmt, p)| tx.query(stmt, p.as_slice())),
        )
        .await?;
        let held = results
            .iter()
            .zip(&checks)
            .all(|(rows, check)| match check {
                Check::Value(want) => {
                    rows.first().map(|r| r.get::<_, &[u8]>(0)) == Some(want.as_slice())
                }
                Check::Rows(n) => rows.len() == *n,
                Check::None => true,
            });
        if held {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(held)
    }
}

/// What a statement of a batch must return.
enum Check<'a> {
    /// The expected row's value.
    Value(&'a Vec<u8>),
    /// One row for each key it inserts.
    Rows(usize),
    None,
}

/// A throwaway PostgreSQL server on 127.0.0.1 for tests and test networks:
/// `initdb` into a fresh directory, started with `pg_ctl` on a free port,
/// stopped and deleted on drop. Durability settings are off (it is thrown
/// away; a killed satellite loses nothing, a killed server is not tested).
/// As root, the server runs as the `postgres` user (PostgreSQL refuses
/// root) from a directory under the system's temporary directory.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

/// The user the server runs as.
const CLUSTER_USER: &str = "loam";

impl Cluster {
    /// Starts a server; `parent` is where its directory goes (the system's
    /// temporary directory when `None`, or as root).
    pub fn start(parent: Option<&Path>) -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let as_postgres = is_root();
        let dir = match parent {
            Some(p) if !as_postgres => tempfile::Builder::new().prefix("postgres").tempdir_in(p),
            _ => tempfile::Builder::new().prefix("loam-postgres").tempdir(),
        }
        .context("cannot create the database directory")?;
        if as_postgres {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("cannot hand the database directory to the postgres user")?;
        }
        let data = dir.path().join("data");
        let mut cluster = Self {
            bin,
            data,
            port: 0,
            as_postgres,
            _dir: dir,
        };
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                cluster.data.as_os_str(),
                "-U".as_ref(),
                CLUSTER_USER.as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 max_connections = 300\nshared_buffers = 128MB\ndeadlock_timeout = 100ms\n",
                cluster.port
            );
            cluster.write_conf(&conf)?;
            let log = cluster.data.join("server.log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    cluster.data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            ) {
                Ok(()) => return Ok(cluster),
                // Most likely the port was taken between choosing and
                // binding it: choose another.
                Err(e) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    last = Some(e.context(tail.lines().last().unwrap_or("").to_string()));
                }
            }
        }
        Err(last
            .expect("tried")
            .context("the PostgreSQL server did not start"))
    }

    /// `postgres://` address of database `db` (made by [`Self::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{CLUSTER_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database and returns its address.
    pub fn create_database(&self, db: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                CLUSTER_USER.as_ref(),
                db.as_ref(),
            ],
        )?;
        Ok(self.url(db))
    }

    fn write_conf(&self, extra: &str) -> anyhow::Result<()> {
        let path = self.data.join("postgresql.auto.conf");
        std::fs::write(&path, extra).with_context(|| format!("cannot write {}", path.display()))
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// Where `initdb` and `pg_ctl` are: `LOAM_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`.
fn server_binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LOAM_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    anyhow::bail!(
        "PostgreSQL's server programs (initdb, pg_ctl) were not found: install Debian's \
         `postgresql` package (scripts/install-deps --test does) or set LOAM_PG_BIN"
    )
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `postgres` user's uid and gid from /etc/passwd.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .context(
            "running as root, the PostgreSQL server needs the `postgres` user \
             (Debian's postgresql package creates it)",
        )
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
