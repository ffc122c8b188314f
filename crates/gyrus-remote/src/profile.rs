//! The AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`).
//!
//! object_store reads neither, and the daemon must not read its own: the files, the profile name
//! and `HOME` all come from the environment map of the user who ran `gyrus deploy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ini::{Ini, ParseOption};

/// What one named profile contributes. Every field is optional: the environment wins over it.
#[derive(Debug, Default, Clone)]
pub(crate) struct AwsProfile {
    pub name: String,
    /// True when `AWS_PROFILE` (or `AWS_DEFAULT_PROFILE`) named it.
    pub explicit: bool,
    /// True when a section for the profile exists in either file.
    pub found: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
}

/// Reads the profile the environment selects. A missing file is no error (most users have
/// none); an unreadable or unparsable one is, because silently ignoring it would turn into a
/// confusing "no credentials".
pub(crate) fn load(env: &BTreeMap<String, String>) -> Result<AwsProfile, String> {
    let named = non_empty(env, "AWS_PROFILE").or_else(|| non_empty(env, "AWS_DEFAULT_PROFILE"));
    let mut profile = AwsProfile {
        name: named.clone().unwrap_or_else(|| "default".to_string()),
        explicit: named.is_some(),
        ..AwsProfile::default()
    };
    let home = non_empty(env, "HOME");
    profile.credentials_file = file_path(
        env,
        "AWS_SHARED_CREDENTIALS_FILE",
        home.as_deref(),
        "credentials",
    );
    profile.config_file = file_path(env, "AWS_CONFIG_FILE", home.as_deref(), "config");

    if let Some(path) = &profile.credentials_file {
        if let Some(ini) = read(path)? {
            if let Some(section) = ini.section(Some(profile.name.as_str())) {
                profile.found = true;
                profile.access_key_id = value(section, "aws_access_key_id");
                profile.secret_access_key = value(section, "aws_secret_access_key");
                profile.session_token = value(section, "aws_session_token");
            }
        }
    }
    if let Some(path) = &profile.config_file {
        if let Some(ini) = read(path)? {
            // The config file names sections "profile NAME", except the default profile, which
            // the AWS CLI writes as plain "default".
            let section = ini
                .section(Some(format!("profile {}", profile.name)))
                .or_else(|| match profile.name.as_str() {
                    "default" => ini.section(Some("default")),
                    _ => None,
                });
            if let Some(section) = section {
                profile.found = true;
                profile.region = value(section, "region");
                profile.endpoint_url = value(section, "endpoint_url");
                // The CLI accepts keys in the config file too; the credentials file wins.
                if profile.access_key_id.is_none() {
                    profile.access_key_id = value(section, "aws_access_key_id");
                    profile.secret_access_key = value(section, "aws_secret_access_key");
                    profile.session_token = value(section, "aws_session_token");
                }
            }
        }
    }
    Ok(profile)
}

fn non_empty(env: &BTreeMap<String, String>, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `$VAR` if set (with a leading `~/` expanded against the user's HOME, as the AWS CLI does),
/// else `$HOME/.aws/<default_name>`.
fn file_path(
    env: &BTreeMap<String, String>,
    var: &str,
    home: Option<&str>,
    default_name: &str,
) -> Option<PathBuf> {
    match non_empty(env, var) {
        Some(path) => match (path.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => Some(Path::new(home).join(rest)),
            _ => Some(PathBuf::from(path)),
        },
        None => home.map(|home| Path::new(home).join(".aws").join(default_name)),
    }
}

fn read(path: &Path) -> Result<Option<Ini>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // No quote or escape processing: secret keys may contain characters those would eat.
    // Leading whitespace is kept on keys so that nested service settings ("s3 =" followed by
    // indented "endpoint_url = ...") do not overwrite the profile's own keys.
    let options = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: false,
        enabled_preserve_key_leading_whitespace: true,
    };
    Ini::load_from_str_opt(&text, options)
        .map(Some)
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

fn value(section: &ini::Properties, key: &str) -> Option<String> {
    section
        .get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_named_profile_from_both_files() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [dev]\naws_access_key_id = AK\naws_secret_access_key = a/b+c=\\d\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-west-2\n\n[profile dev]\nregion = eu-west-1\n\
             endpoint_url = http://localhost:9000\ns3 =\n  endpoint_url = http://nested\n",
        )
        .unwrap();
        let home_str = home.path().to_str().unwrap();

        let p = load(&env(&[("HOME", home_str), ("AWS_PROFILE", "dev")])).unwrap();
        assert!(p.found && p.explicit);
        assert_eq!(p.access_key_id.as_deref(), Some("AK"));
        assert_eq!(p.secret_access_key.as_deref(), Some("a/b+c=\\d"));
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(p.endpoint_url.as_deref(), Some("http://localhost:9000"));

        let p = load(&env(&[("HOME", home_str)])).unwrap();
        assert_eq!(p.name, "default");
        assert_eq!(p.access_key_id.as_deref(), Some("D"));
        assert_eq!(p.region.as_deref(), Some("us-west-2"));
        assert_eq!(p.endpoint_url, None);
    }

    #[test]
    fn missing_files_are_no_error_and_env_paths_win() {
        let home = tempfile::tempdir().unwrap();
        let other = home.path().join("elsewhere");
        std::fs::write(
            &other,
            "[x]\naws_access_key_id = X\naws_secret_access_key = XS\n",
        )
        .unwrap();
        let home_str = home.path().to_str().unwrap();

        let p = load(&env(&[("HOME", home_str)])).unwrap();
        assert!(!p.found);
        assert_eq!(p.access_key_id, None);

        let p = load(&env(&[
            ("HOME", home_str),
            ("AWS_PROFILE", "x"),
            ("AWS_SHARED_CREDENTIALS_FILE", "~/elsewhere"),
        ]))
        .unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("X"));
    }
}
