//! The daemon's durable state: one SQLite database under `GYRUS_HOME`. It holds what must
//! survive a restart (each API's spec, snapshot and generation); live replica state is in
//! memory only and is rebuilt by starting replicas again.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::DaemonError;

/// An API as stored.
#[derive(Debug, Clone)]
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

pub struct StateStore {
    conn: Mutex<Connection>,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, DaemonError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS apis (
                 name        TEXT PRIMARY KEY,
                 spec_json   TEXT NOT NULL,
                 project_dir TEXT NOT NULL,
                 dotenv_json TEXT NOT NULL,
                 deploy_hash TEXT NOT NULL,
                 generation  INTEGER NOT NULL,
                 created_at  TEXT NOT NULL,
                 updated_at  TEXT NOT NULL
             );",
        )?;
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
                 deploy_hash = ?5, generation = ?6, updated_at = ?8",
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

    /// Project snapshots still referenced by some API (the rest may be removed).
    pub fn referenced_projects(&self) -> Result<Vec<String>, DaemonError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT project_dir FROM apis")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
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
}
