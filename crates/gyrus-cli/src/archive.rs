//! Packs a project for `gyrus deploy`: every file under the project directory except Python
//! bytecode, names starting with `.`, the config file, and what `.cortexignore` excludes
//! (gitignore syntax). `.env` is added so the daemon can read it, but it never becomes a file
//! of the snapshot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct PackedProject {
    pub archive: Vec<u8>,
    pub files: usize,
    pub bytes: u64,
}

/// The files a deploy would include, relative to `project_dir`, in a stable order.
pub fn project_files(project_dir: &Path, config_rel: &Path) -> Result<Vec<PathBuf>> {
    let walker = ignore::WalkBuilder::new(project_dir)
        .hidden(true)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .ignore(false)
        .parents(false)
        .require_git(false)
        .add_custom_ignore_filename(".cortexignore")
        .sort_by_file_name(|a, b| a.cmp(b))
        .build();
    let mut files = Vec::new();
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", project_dir.display()))?;
        let is_file = entry
            .file_type()
            .is_some_and(|t| t.is_file() || t.is_symlink())
            && entry.path().is_file();
        if !is_file {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(project_dir)
            .unwrap_or(entry.path())
            .to_path_buf();
        let bytecode = rel
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "pyc" | "pyo" | "pyd"));
        if bytecode || rel == config_rel {
            continue;
        }
        files.push(rel);
    }
    Ok(files)
}

pub fn pack(project_dir: &Path, config_path: &Path, config_name: &str) -> Result<PackedProject> {
    let config_rel = Path::new(config_name);
    let files = project_files(project_dir, config_rel)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    builder.follow_symlinks(true);
    let mut bytes = 0u64;
    for rel in &files {
        let full = project_dir.join(rel);
        bytes += std::fs::metadata(&full).map(|m| m.len()).unwrap_or(0);
        builder
            .append_path_with_name(&full, rel)
            .with_context(|| format!("adding {} to the deploy archive", full.display()))?;
    }
    builder
        .append_path_with_name(config_path, config_rel)
        .with_context(|| format!("adding {}", config_path.display()))?;
    let dotenv = project_dir.join(".env");
    if dotenv.is_file() {
        builder
            .append_path_with_name(&dotenv, ".env")
            .context("adding .env")?;
    }
    let archive = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .context("writing the deploy archive")?;
    Ok(PackedProject {
        archive,
        files: files.len(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_what_cortex_excluded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for f in [
            "predictor.py",
            "cortex.yaml",
            "a.pyc",
            "keep/b.txt",
            ".hidden",
            ".git/config",
            "data/big.bin",
            "notes.log",
            "sub/x.log",
        ] {
            std::fs::create_dir_all(p.join(f).parent().unwrap()).unwrap();
            std::fs::write(p.join(f), "x").unwrap();
        }
        std::fs::write(p.join(".cortexignore"), "data/\n*.log\n!keep/\n").unwrap();
        let files = project_files(p, Path::new("cortex.yaml")).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(names, vec!["keep/b.txt", "predictor.py"]);
    }
}
