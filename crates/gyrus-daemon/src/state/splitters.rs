//! Traffic splitters as stored: a splitter has no snapshot, generation or replicas, only its
//! spec and when it was created and last changed.

use rusqlite::params;

use super::StateStore;
use crate::error::DaemonError;

#[derive(Debug, Clone)]
pub struct StoredSplitter {
    pub spec: gyrus_spec::SplitterSpec,
    pub created_at: String,
    pub updated_at: String,
}

impl StateStore {
    pub fn upsert_splitter(&self, s: &StoredSplitter) -> Result<(), DaemonError> {
        let json = serde_json::to_string(&s.spec)
            .map_err(|e| DaemonError::Internal(format!("encoding a splitter: {e}")))?;
        self.conn().execute(
            "INSERT INTO splitters (name, spec_json, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET spec_json = ?2, updated_at = ?4",
            params![s.spec.name, json, s.created_at, s.updated_at],
        )?;
        Ok(())
    }

    /// Every splitter whose spec reads (one that does not is reported and left out).
    pub fn splitters(&self) -> Result<Vec<StoredSplitter>, DaemonError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec_json, created_at, updated_at FROM splitters ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, json, created_at, updated_at) = row?;
            match serde_json::from_str(&json) {
                Ok(spec) => out.push(StoredSplitter {
                    spec,
                    created_at,
                    updated_at,
                }),
                Err(e) => tracing::error!("cannot restore traffic splitter {name}: {e}"),
            }
        }
        Ok(out)
    }

    pub fn delete_splitter(&self, name: &str) -> Result<bool, DaemonError> {
        Ok(self
            .conn()
            .execute("DELETE FROM splitters WHERE name = ?1", params![name])?
            > 0)
    }
}
