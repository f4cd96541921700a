//! Limit notices: what a node agent did or saw about a share's processes (limits enforced by
//! watching, see the agent's `enforce` module and docs/ISOLATION.md). The agent sends them, the
//! controller passes them to the slice's watchers; the kinds are named here once for both.

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeKind {
    /// A share's processes hold more memory than its limit (the grace started).
    MemoryOverLimit,
    /// The share's process was sent SIGTERM.
    ProcessStopped,
    /// The process outlived SIGTERM and was sent SIGKILL.
    ProcessKilled,
    /// A share used more compute than its fraction for the whole window (reported only).
    ComputeOverShare,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 4] = [
        NoticeKind::MemoryOverLimit,
        NoticeKind::ProcessStopped,
        NoticeKind::ProcessKilled,
        NoticeKind::ComputeOverShare,
    ];

    /// The wire name (`SliceNotice.kind`) and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::MemoryOverLimit => "memory_over_limit",
            NoticeKind::ProcessStopped => "process_stopped",
            NoticeKind::ProcessKilled => "process_killed",
            NoticeKind::ComputeOverShare => "compute_over_share",
        }
    }

    /// The kind of a wire name; `None` for a name this version does not know.
    pub fn parse(s: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_wire_name_and_nothing_else_does() {
        for k in NoticeKind::ALL {
            assert_eq!(NoticeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(NoticeKind::parse("Memory_Over_Limit"), None);
        assert_eq!(NoticeKind::parse(""), None);
    }
}
