//! Signals to a slice's processes (limit enforcement, reclaim).

/// kill(2) with SIGTERM or SIGKILL; `ESRCH` (no such process: it exited) is success.
pub fn send(pid: u32, signal: crate::enforce::StopSignal) -> Result<(), super::BackendError> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Err(super::BackendError::Signal {
            pid,
            msg: "not a valid process id".into(),
        });
    };
    // pid 0 and negative ids address process groups: never.
    if p <= 0 {
        return Err(super::BackendError::Signal {
            pid,
            msg: "not a single process".into(),
        });
    }
    let sig = match signal {
        crate::enforce::StopSignal::Term => libc::SIGTERM,
        crate::enforce::StopSignal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; `p` is a single
    // positive process id (checked above), so no process group is signalled.
    let rc = unsafe { libc::kill(p, sig) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(super::BackendError::Signal {
        pid,
        msg: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::StopSignal;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn term_and_kill_reach_the_process_and_a_gone_one_is_no_error() {
        for (sig, code) in [(StopSignal::Term, 15), (StopSignal::Kill, 9)] {
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            send(child.id(), sig).unwrap();
            assert_eq!(child.wait().unwrap().signal(), Some(code));
            // Reaped: no such process any more.
            send(child.id(), sig).unwrap();
        }
    }

    #[test]
    fn process_groups_and_out_of_range_ids_are_refused() {
        assert!(matches!(
            send(0, StopSignal::Term),
            Err(super::super::BackendError::Signal { pid: 0, .. })
        ));
        assert!(send(u32::MAX, StopSignal::Kill).is_err());
    }
}
