//! On-disk cache of compiled kernels. The key is a hash of the source, the architecture and
//! the NVRTC version; every entry carries a sha256 of its payload, so a damaged entry is
//! recompiled, never loaded.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where compiled kernels are kept.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// `LAYERSTREAM_KERNEL_CACHE`, else `XDG_CACHE_HOME/layerstream/kernels`, else
    /// `~/.cache/layerstream/kernels`; no caching if none can be created.
    pub fn from_env() -> Self {
        let from = |key: &str| {
            std::env::var_os(key)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = from("LAYERSTREAM_KERNEL_CACHE")
            .or_else(|| from("XDG_CACHE_HOME").map(|p| p.join("layerstream").join("kernels")))
            .or_else(|| from("HOME").map(|p| p.join(".cache").join("layerstream").join("kernels")));
        Self::at(dir)
    }

    /// A cache in `dir` (`None`: compile every time).
    pub fn at(dir: Option<PathBuf>) -> Self {
        let dir = dir.filter(|d| std::fs::create_dir_all(d).is_ok());
        KernelCache { dir }
    }

    /// The cache folder, if caching is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// File name of an entry.
    pub fn entry_name(module: &str, source: &str, arch: &str, nvrtc: (i32, i32)) -> String {
        let mut hash = Sha256::new();
        hash.update(source.as_bytes());
        hash.update(arch.as_bytes());
        hash.update(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
        let digest = hash.finalize();
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("{module}-{arch}-{hex}.cubin")
    }

    /// The payload of an entry if it exists and is intact; a damaged one is removed.
    pub fn load(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.dir.as_ref()?.join(name);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() > 32 && Sha256::digest(&bytes[32..]).as_slice() == &bytes[..32] {
            return Some(bytes[32..].to_vec());
        }
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Stores an entry (temp file + rename); failures only cost a recompile next time.
    pub fn store(&self, name: &str, payload: &[u8]) {
        let Some(dir) = &self.dir else { return };
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut bytes = Sha256::digest(payload).to_vec();
        bytes.extend_from_slice(payload);
        if std::fs::write(&temp, &bytes).is_ok() && std::fs::rename(&temp, dir.join(name)).is_err()
        {
            let _ = std::fs::remove_file(&temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_entries_are_not_trusted() {
        let dir = std::env::temp_dir().join(format!("ls-kcache-{}", std::process::id()));
        let cache = KernelCache::at(Some(dir.clone()));
        let name = KernelCache::entry_name("norm", "src", "sm_90", (13, 0));
        assert!(cache.load(&name).is_none());
        cache.store(&name, b"cubin bytes");
        assert_eq!(cache.load(&name).as_deref(), Some(&b"cubin bytes"[..]));
        // Flip one payload byte: the entry is dropped.
        let path = dir.join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(cache.load(&name).is_none());
        assert!(!path.exists());
        // A different NVRTC version or architecture is a different entry.
        assert_ne!(
            name,
            KernelCache::entry_name("norm", "src", "sm_90", (12, 4))
        );
        assert_ne!(
            name,
            KernelCache::entry_name("norm", "src", "sm_75", (13, 0))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
