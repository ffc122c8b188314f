//! The daemon's durable state: one SQLite database under `GYRUS_HOME`. It holds what must
//! survive a restart: each API's desired deployment (spec, snapshot, generation), the last
//! generation that went live (`serving`, which keeps serving when a newer one fails), and why
//! the desired generation failed, if it did. Live replica state is in memory only and is
//! rebuilt by starting replicas again.
//!
//! The schema is versioned with SQLite's `user_version`: [`MIGRATIONS`] run in order, each in
//! its own transaction, so a database from any earlier gyrus opens.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::DaemonError;

mod splitters;

pub use splitters::StoredSplitter;

/// An API as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredApi {
    pub name: String,
    pub spec_json: String,
    pub project_dir: String,
    /// `.env` pairs as a JSON array of `[name, value]`.
    pub dotenv_json: String,
    /// Hash of everything that makes a deployment different (spec, snapshot, .env).
    pub deploy_hash: String,
    pub generation: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// An API as the daemon restores it at start.
#[derive(Debug, Clone)]
pub struct RestorableApi {
    pub desired: StoredApi,
    /// The last generation that went live, when it is not `desired`.
    pub serving: Option<StoredApi>,
    /// Why `desired` failed to deploy, if it did.
    pub error: Option<String>,
}

/// Schema versions: `MIGRATIONS[i]` takes a database from `user_version` i to i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema (databases made before versioning already have it).
    "CREATE TABLE IF NOT EXISTS apis (
         name        TEXT PRIMARY KEY,
         spec_json   TEXT NOT NULL,
         project_dir TEXT NOT NULL,
         dotenv_json TEXT NOT NULL,
         deploy_hash TEXT NOT NULL,
         generation  INTEGER NOT NULL,
         created_at  TEXT NOT NULL,
         updated_at  TEXT NOT NULL
     );",
    // 2: the generation serving (a StoredApi as JSON) and the desired one's failure.
    "ALTER TABLE apis ADD COLUMN serving_json TEXT;
     ALTER TABLE apis ADD COLUMN error TEXT;",
    // 3: batch jobs' batches (`jobs::SqliteQueue`).
    "CREATE TABLE batches (
         job_id      TEXT NOT NULL,
         seq         INTEGER NOT NULL,
         batch_id    TEXT NOT NULL,
         payload     TEXT NOT NULL,
         state       TEXT NOT NULL,
         failures    INTEGER NOT NULL DEFAULT 0,
         deliveries  INTEGER NOT NULL DEFAULT 0,
         token       TEXT,
         lease_until INTEGER,
         took_ms     INTEGER,
         error       TEXT,
         traceback   TEXT,
         PRIMARY KEY (job_id, seq)
     );
     CREATE INDEX batches_by_state ON batches (job_id, state, seq);",
    // 4: batch jobs (`jobs::JobStore`).
    "CREATE TABLE jobs (
         job_id           TEXT PRIMARY KEY,
         api              TEXT NOT NULL,
         spec_json        TEXT NOT NULL,
         status           TEXT NOT NULL,
         workers          INTEGER NOT NULL,
         timeout_secs     INTEGER,
         max_receive_count INTEGER NOT NULL,
         created_at       TEXT NOT NULL,
         started_at       TEXT,
         ended_at         TEXT,
         completion       TEXT NOT NULL DEFAULT 'pending',
         completion_error TEXT,
         error            TEXT
     );
     CREATE INDEX jobs_by_api ON jobs (api, created_at);",
    // 5: traffic splitters (`state::splitters`).
    "CREATE TABLE splitters (
         name       TEXT PRIMARY KEY,
         spec_json  TEXT NOT NULL,
         created_at TEXT NOT NULL,
         updated_at TEXT NOT NULL
     );",
];

pub struct StateStore {
    conn: Mutex<Connection>,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, DaemonError> {
        let mut conn = Connection::open(path)?;
        // `.env` values live here: the owner's only. SQLite gives its -wal and -shm files the
        // database's mode when it creates them; older ones are set here too.
        {
            use std::os::unix::fs::PermissionsExt;
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            let mut shm = path.as_os_str().to_owned();
            shm.push("-shm");
            for file in [path.as_os_str().to_owned(), wal, shm] {
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;",
        )?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn upsert(&self, api: &StoredApi) -> Result<(), DaemonError> {
        self.conn().execute(
            "INSERT INTO apis (name, spec_json, project_dir, dotenv_json, deploy_hash, generation, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(name) DO UPDATE SET spec_json = ?2, project_dir = ?3, dotenv_json = ?4,
                 deploy_hash = ?5, generation = ?6, updated_at = ?8, error = NULL",
            params![
                api.name,
                api.spec_json,
                api.project_dir,
                api.dotenv_json,
                api.deploy_hash,
                api.generation as i64,
                api.created_at,
                api.updated_at
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Option<StoredApi>, DaemonError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, spec_json, project_dir, dotenv_json, deploy_hash, generation, created_at, updated_at
                 FROM apis WHERE name = ?1",
                params![name],
                row_to_api,
            )
            .optional()?)
    }

    pub fn list(&self) -> Result<Vec<StoredApi>, DaemonError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec_json, project_dir, dotenv_json, deploy_hash, generation, created_at, updated_at
             FROM apis ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_api)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn delete(&self, name: &str) -> Result<bool, DaemonError> {
        Ok(self
            .conn()
            .execute("DELETE FROM apis WHERE name = ?1", params![name])?
            > 0)
    }

    /// Records the generation that went live (it keeps serving if a newer one fails).
    pub fn set_serving(&self, api: &StoredApi) -> Result<(), DaemonError> {
        let json = serde_json::to_string(api)
            .map_err(|e| DaemonError::Internal(format!("encoding the serving generation: {e}")))?;
        self.conn().execute(
            "UPDATE apis SET serving_json = ?2,
                 error = CASE WHEN generation = ?3 THEN NULL ELSE error END
             WHERE name = ?1",
            params![api.name, json, api.generation as i64],
        )?;
        Ok(())
    }

    /// Records why `generation` failed, if it is still the desired one.
    pub fn set_error(&self, name: &str, generation: u64, error: &str) -> Result<(), DaemonError> {
        self.conn().execute(
            "UPDATE apis SET error = ?3 WHERE name = ?1 AND generation = ?2",
            params![name, generation as i64, error],
        )?;
        Ok(())
    }

    /// Every API with what it needs to come back as it was: the desired generation, the one
    /// serving when that differs, and the desired one's failure.
    pub fn restorable(&self) -> Result<Vec<RestorableApi>, DaemonError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec_json, project_dir, dotenv_json, deploy_hash, generation, created_at, updated_at,
                    serving_json, error
             FROM apis ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                row_to_api(r)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (desired, serving_json, error) = row?;
            let serving = match serving_json {
                Some(json) => match serde_json::from_str::<StoredApi>(&json) {
                    Ok(s) if s.generation != desired.generation => Some(s),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!("api {}: serving generation unreadable: {e}", desired.name);
                        None
                    }
                },
                None => None,
            };
            out.push(RestorableApi {
                desired,
                serving,
                error,
            });
        }
        Ok(out)
    }

    /// Project snapshots still referenced by some API, desired or serving (the rest may be
    /// removed).
    pub fn referenced_projects(&self) -> Result<Vec<String>, DaemonError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT project_dir FROM apis
             UNION SELECT json_extract(serving_json, '$.project_dir') FROM apis
                 WHERE serving_json IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, Option<String>>(0))?;
        Ok(rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DaemonError> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(DaemonError::Internal(format!(
            "the state database is from a newer gyrus (schema {version}, this one knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn row_to_api(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredApi> {
    Ok(StoredApi {
        name: r.get(0)?,
        spec_json: r.get(1)?,
        project_dir: r.get(2)?,
        dotenv_json: r.get(3)?,
        deploy_hash: r.get(4)?,
        generation: r.get::<_, i64>(5)? as u64,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("s.db")).unwrap();
        let mut api = StoredApi {
            name: "a".into(),
            spec_json: "{}".into(),
            project_dir: "/p".into(),
            dotenv_json: "[]".into(),
            deploy_hash: "h1".into(),
            generation: 1,
            created_at: "t0".into(),
            updated_at: "t0".into(),
        };
        store.upsert(&api).unwrap();
        api.generation = 2;
        api.updated_at = "t1".into();
        api.created_at = "ignored".into();
        store.upsert(&api).unwrap();
        let got = store.get("a").unwrap().unwrap();
        assert_eq!(got.generation, 2);
        assert_eq!(got.created_at, "t0", "created_at is kept across updates");
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.delete("a").unwrap());
        assert!(store.get("a").unwrap().is_none());
        // Reopening sees the same data: state survives a restart.
        store.upsert(&api).unwrap();
        drop(store);
        let again = StateStore::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(again.list().unwrap().len(), 1);
    }

    fn api(generation: u64, project_dir: &str) -> StoredApi {
        StoredApi {
            name: "a".into(),
            spec_json: "{}".into(),
            project_dir: project_dir.into(),
            dotenv_json: "[]".into(),
            deploy_hash: format!("h{generation}"),
            generation,
            created_at: "t0".into(),
            updated_at: "t0".into(),
        }
    }

    #[test]
    fn serving_generation_and_failure_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = StateStore::open(&path).unwrap();
        let good = api(1, "/p1");
        store.upsert(&good).unwrap();
        store.set_serving(&good).unwrap();
        // Live and desired are the same generation: nothing separate to restore.
        let r = store.restorable().unwrap();
        assert!(r[0].serving.is_none() && r[0].error.is_none());

        let bad = api(2, "/p2");
        store.upsert(&bad).unwrap();
        store.set_error("a", 2, "constructor raised").unwrap();
        store.set_error("a", 1, "stale").unwrap(); // not the desired generation: ignored
        drop(store);
        let store = StateStore::open(&path).unwrap();
        let r = store.restorable().unwrap();
        assert_eq!(r[0].desired.generation, 2);
        assert_eq!(r[0].serving.as_ref().map(|s| s.generation), Some(1));
        assert_eq!(r[0].error.as_deref(), Some("constructor raised"));
        let mut dirs = store.referenced_projects().unwrap();
        dirs.sort();
        assert_eq!(dirs, vec!["/p1", "/p2"]);

        // A new deploy clears the failure; going live makes it the serving one.
        let next = api(3, "/p3");
        store.upsert(&next).unwrap();
        assert!(store.restorable().unwrap()[0].error.is_none());
        store.set_serving(&next).unwrap();
        assert!(store.restorable().unwrap()[0].serving.is_none());
        assert_eq!(store.referenced_projects().unwrap(), vec!["/p3"]);
    }

    #[test]
    fn a_database_from_before_versioning_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO apis VALUES ('old', '{}', '/p', '[]', 'h', 4, 't', 't')",
                [],
            )
            .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let r = store.restorable().unwrap();
        assert_eq!(r[0].desired.generation, 4);
        assert!(r[0].serving.is_none());
        let version: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }
}
