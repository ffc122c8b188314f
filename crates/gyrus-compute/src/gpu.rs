//! Finding the machine's NVIDIA GPUs.
//!
//! Replicas get GPUs through `CUDA_VISIBLE_DEVICES`, whose values are CUDA device ordinals
//! `0..count`, so what matters is how many GPUs there are, not what the kernel calls them: the
//! indices returned are always `0..count`, whichever source found them (`/dev/nvidia2` alone in
//! a container is still CUDA device 0).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that overrides GPU detection with a count.
pub const GPU_COUNT_ENV: &str = "GYRUS_GPU_COUNT";

/// A wedged driver can make nvidia-smi hang; daemon start must not.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);

/// The GPUs found, and when there are none, why (for the deploy error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inventory {
    pub indices: Vec<u32>,
    pub none_reason: String,
}

impl Inventory {
    pub(crate) fn counted(count: u32, none_reason: String) -> Inventory {
        Inventory {
            indices: (0..count).collect(),
            none_reason,
        }
    }
}

/// The machine's GPU indices (nvidia-smi -L, else `/proc/driver/nvidia/gpus/*`, else
/// `/dev/nvidia[0-9]+`). `GYRUS_GPU_COUNT` (env) overrides detection, for tests of the assignment
/// and the deploy error on machines without GPUs.
pub fn detect_gpus() -> Vec<u32> {
    inventory().indices
}

pub(crate) fn inventory() -> Inventory {
    if let Some(inventory) = from_env(std::env::var(GPU_COUNT_ENV).ok().as_deref()) {
        return inventory;
    }
    let mut tried = Vec::new();
    match nvidia_smi() {
        Ok(0) => tried.push("nvidia-smi -L listed none".to_string()),
        Ok(n) => return Inventory::counted(n, String::new()),
        Err(why) => tried.push(why),
    }
    match fs::read_dir("/proc/driver/nvidia/gpus") {
        Ok(dir) => {
            let n = dir.flatten().count();
            if n > 0 {
                return Inventory::counted(saturating_u32(n), String::new());
            }
            tried.push("/proc/driver/nvidia/gpus is empty".to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tried.push("/proc/driver/nvidia/gpus is absent".to_string())
        }
        Err(e) => tried.push(format!("cannot read /proc/driver/nvidia/gpus: {e}")),
    }
    let n = count_dev_nodes(Path::new("/dev"));
    if n > 0 {
        return Inventory::counted(n, String::new());
    }
    tried.push("no /dev/nvidia<N> device".to_string());
    Inventory::counted(0, format!("no NVIDIA GPU found: {}", tried.join(", ")))
}

/// The `GYRUS_GPU_COUNT` override; None when unset or unusable (detection then runs as usual).
pub(crate) fn from_env(value: Option<&str>) -> Option<Inventory> {
    let value = value?;
    match value.trim().parse::<u32>() {
        Ok(n) => Some(Inventory::counted(n, format!("{GPU_COUNT_ENV} is 0"))),
        Err(_) => {
            tracing::warn!("ignoring {GPU_COUNT_ENV}={value:?}: expected a number of GPUs");
            None
        }
    }
}

/// The number of GPUs `nvidia-smi -L` lists, or why it could not say.
fn nvidia_smi() -> Result<u32, String> {
    let mut child = match Command::new("nvidia-smi")
        .arg("-L")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("nvidia-smi is not installed".to_string())
        }
        Err(e) => return Err(format!("cannot run nvidia-smi: {e}")),
    };
    // Read stdout on a thread so that a chatty nvidia-smi cannot block on a full pipe while we
    // wait for it with a deadline.
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        })
    });
    let deadline = Instant::now() + NVIDIA_SMI_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nvidia-smi -L did not answer within {}s",
                    NVIDIA_SMI_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for nvidia-smi: {e}")),
        }
    };
    let text = reader
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(format!("nvidia-smi -L failed ({status})"));
    }
    Ok(count_nvidia_smi_gpus(&text))
}

/// Counts the `GPU <n>: ...` lines of `nvidia-smi -L` (MIG instances, listed indented under
/// their GPU, are not separate CUDA ordinals unless addressed by UUID, so they are not counted).
pub(crate) fn count_nvidia_smi_gpus(text: &str) -> u32 {
    let n = text
        .lines()
        .filter(|line| {
            line.strip_prefix("GPU ")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(index, _)| {
                    !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
                })
        })
        .count();
    saturating_u32(n)
}

/// Counts `/dev/nvidia<digits>` nodes (not nvidiactl, nvidia-uvm, nvidia-modeset, ...).
fn count_dev_nodes(dev: &Path) -> u32 {
    let Ok(dir) = fs::read_dir(dev) else {
        return 0;
    };
    let n = dir
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(is_gpu_node_name))
        .count();
    saturating_u32(n)
}

pub(crate) fn is_gpu_node_name(name: &str) -> bool {
    name.strip_prefix("nvidia")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_listing() {
        let text =
            "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f1c0e1a-aaaa-bbbb-cccc-000000000000)\n\
                    GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-6a2b...)\n  \
                    MIG 1g.5gb      Device  0: (UUID: MIG-1234)\n";
        assert_eq!(count_nvidia_smi_gpus(text), 2);
        assert_eq!(count_nvidia_smi_gpus(""), 0);
        assert_eq!(
            count_nvidia_smi_gpus("No devices were found\nGPU x: nope\n"),
            0
        );
    }

    #[test]
    fn dev_node_names() {
        assert!(is_gpu_node_name("nvidia0"));
        assert!(is_gpu_node_name("nvidia12"));
        for name in [
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-modeset",
            "nvidia",
            "nvidia0a",
        ] {
            assert!(!is_gpu_node_name(name), "{name}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm", "null"] {
            fs::write(dir.path().join(name), "").expect("write");
        }
        assert_eq!(count_dev_nodes(dir.path()), 2);
    }

    #[test]
    fn env_override() {
        assert_eq!(from_env(None), None);
        assert_eq!(from_env(Some("many")), None);
        let four = from_env(Some("4")).expect("4 parses");
        assert_eq!(four.indices, vec![0, 1, 2, 3]);
        let none = from_env(Some(" 0 ")).expect("0 parses");
        assert!(none.indices.is_empty());
        assert_eq!(none.none_reason, "GYRUS_GPU_COUNT is 0");
    }
}
