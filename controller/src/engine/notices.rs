//! Limit notices from the node agents (share limits enforced by watching): passed to the slice's
//! watchers as LIMIT events and counted.

use greenslice_core::notice::NoticeKind;
use tracing::{info, warn};

use super::Controller;
use crate::model::events::EventKind;

impl Controller {
    /// Takes an agent's notice about one of its slices' processes. A notice about a slice the
    /// node does not hold (another node's, or one already finished) is logged and dropped: an
    /// agent speaks only for its own slices.
    pub fn limit_notice(&self, node: &str, slice_id: &str, kind: NoticeKind, message: &str) {
        let slice = self.with_state(|st| {
            st.slice(slice_id)
                .filter(|s| s.node == node && s.is_live())
                .cloned()
        });
        let Some(slice) = slice else {
            warn!(%node, slice = %slice_id, kind = kind.as_str(), "limit notice for a slice the node does not hold; dropped");
            return;
        };
        info!(%node, slice = %slice_id, tenant = %slice.tenant, kind = kind.as_str(), "{message}");
        self.metrics.limit_notice(node, kind.as_str());
        self.emit(EventKind::Limit, &slice, message.to_string());
    }
}
