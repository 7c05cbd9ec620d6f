//! Secret keys the server keeps in its data dir (the XEP-0484 FAST token sealing key, the
//! XEP-0363 URL signing key): 32 random bytes, created on first use, readable by the owner
//! only. One implementation so every key file gets the same care (exclusive creation,
//! fsync, 0600, a clear error for a damaged file).

use std::path::Path;

/// Read the 32-byte key at `path`, creating it when missing.
pub fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
        Err(e) => return Err(e),
    };
    bytes.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} must hold exactly 32 bytes", path.display()),
        )
    })
}

/// Write a fresh random key, readable by the owner only. `create_new`: of two processes
/// racing here only one can win; the loser reads the winner's key.
fn create(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let key: [u8; 32] = rand::random();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(&key)?;
            f.sync_all()?;
            Ok(key.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        let a = super::load_or_create(&path).expect("created");
        let b = super::load_or_create(&path).expect("read");
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").expect("write");
        assert!(super::load_or_create(&path).is_err());
    }
}
