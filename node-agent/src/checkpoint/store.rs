//! The checkpoint file on disk: read it, write it atomically.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{CheckpointError, FILE_NAME, NodeState, format};

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// The checkpoint of one node in a state folder.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    dir: PathBuf,
}

impl CheckpointFile {
    /// The checkpoint in `dir`, created (with its parents) if missing; fails when the folder cannot
    /// be made or written, so an agent that could not keep its checkpoint does not start.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let probe = dir.join(format!(".{FILE_NAME}.probe"));
        std::fs::write(&probe, b"").map_err(io_err(dir))?;
        let _ = std::fs::remove_file(&probe);
        Ok(CheckpointFile {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads and checks the checkpoint of `node` ([`CheckpointError::Missing`] when there is none).
    pub fn read(&self, node: &str) -> Result<NodeState, CheckpointError> {
        let path = self.path();
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::Missing(path.display().to_string()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut bytes = Vec::new();
        f.take(format::MAX_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        let state = format::decode(&bytes)?;
        if state.node != node {
            return Err(CheckpointError::OtherNode {
                expected: node.to_string(),
                found: state.node,
            });
        }
        Ok(state)
    }

    /// Writes `state`: a temporary file in the same folder, fsync, rename over the checkpoint,
    /// fsync of the folder. A crash at any point leaves the previous checkpoint or the new one.
    pub fn write(&self, state: &NodeState) -> Result<(), CheckpointError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&format::encode(state)).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_checkpoint_is_read_back_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = CheckpointFile::open(&dir.path().join("a/b")).unwrap();
        assert!(matches!(f.read("n1"), Err(CheckpointError::Missing(_))));
        let s = NodeState {
            node: "n1".into(),
            ledger_adoption_pending: true,
            ..Default::default()
        };
        f.write(&s).unwrap();
        assert_eq!(f.read("n1").unwrap(), s);
        assert!(matches!(
            f.read("n2"),
            Err(CheckpointError::OtherNode { .. })
        ));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            CheckpointFile::open(&file.join("sub")),
            Err(CheckpointError::Io { .. })
        ));
    }
}
