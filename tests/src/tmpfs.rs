//! A size-limited tmpfs mounted on a service's data directory, to fill its disk (`mount` needs root:
//! [`Tmpfs::mount`] says so instead of passing without testing anything). Unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Tmpfs {
    path: PathBuf,
}

/// Name of the file [`Tmpfs::fill`] takes the free space with.
const FILLER: &str = "filler";

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path` (created if missing).
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs> {
        if !is_root() {
            bail!("this test mounts a tmpfs to fill a disk and must run as root (CI does)");
        }
        std::fs::create_dir_all(path)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(path))?;
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// Grows (or shrinks) the filesystem to `bytes`, keeping its files.
    pub fn resize(&self, bytes: u64) -> Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.path))
    }

    /// Takes all the free space but `leave` bytes with a file: the disk is "full" for whatever needs
    /// more. [`Tmpfs::unfill`] frees it again.
    pub fn fill(&self, leave: u64) -> Result<()> {
        let free = self.free()?;
        let file = std::fs::File::create(self.path.join(FILLER))?;
        file.set_len(0)?;
        // tmpfs allocates on write, not on set_len: write the bytes.
        let mut left = free.saturating_sub(leave);
        let chunk = vec![1u8; 1 << 20];
        let mut file = std::io::BufWriter::new(file);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if let Err(e) = std::io::Write::write_all(&mut file, &chunk[..n]) {
                bail!("filling {}: {e}", self.path.display());
            }
            left -= n as u64;
        }
        std::io::Write::flush(&mut file)?;
        Ok(())
    }

    pub fn unfill(&self) -> Result<()> {
        Ok(std::fs::remove_file(self.path.join(FILLER))?)
    }

    /// Free bytes, as `df` reports them.
    pub fn free(&self) -> Result<u64> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("df of {}: {text}", self.path.display()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still running on it (a failed test) must not keep the mount forever.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
