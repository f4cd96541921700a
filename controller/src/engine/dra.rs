//! ResourceClaims made real: the node agent, as the kubelet's DRA driver, asks for the devices the
//! Kubernetes scheduler allocated to a claim; each becomes a slice pinned where the allocation
//! says (see [`crate::model::dra`] for how the slices are named).

use greenslice_core::slice::SliceSpec;
use tracing::{info, warn};

use super::Controller;
use crate::error::ControllerError;
use crate::model::dra::{MAX_ATTEMPTS, claim_key, is_claim_slice};
use crate::model::slice::SliceRecord;
use crate::placement::Pin;

/// One device of a claim to make.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimDevice {
    pub spec: SliceSpec,
    pub pin: Pin,
}

impl Controller {
    /// Makes every device of claim `uid`, `namespace/name` (tenant = its namespace), in order;
    /// answers their ACTIVE
    /// slices. A retry answers the slices the first call made (the kubelet retries prepares). All
    /// or nothing: when a device cannot be made, the slices this call made are released and the
    /// error is returned, so nothing is left half made.
    pub async fn prepare_claim(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        devices: &[ClaimDevice],
    ) -> Result<Vec<SliceRecord>, ControllerError> {
        let claim = format!("{namespace}/{name}");
        let mut made: Vec<SliceRecord> = Vec::with_capacity(devices.len());
        let mut fresh: Vec<String> = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            match self.prepare_device(uid, namespace, &claim, i, d).await {
                Ok((slice, replayed)) => {
                    if !replayed {
                        fresh.push(slice.id.clone());
                    }
                    made.push(slice);
                }
                Err(e) => {
                    warn!(claim = uid, device = i, error = %e, "claim preparation failed; undoing it");
                    for id in made.iter().map(|s| &s.id) {
                        if let Err(u) = self.release_as(id, "claim preparation failed", true).await
                        {
                            warn!(slice = %id, error = %u, "cannot undo a claim's slice");
                        }
                    }
                    return Err(e);
                }
            }
        }
        if !fresh.is_empty() {
            info!(claim = uid, namespace, slices = ?fresh, "claim prepared");
        }
        Ok(made)
    }

    /// Device `index` of a claim: its live slice when it has one, else a new one.
    async fn prepare_device(
        &self,
        uid: &str,
        namespace: &str,
        claim: &str,
        index: usize,
        d: &ClaimDevice,
    ) -> Result<(SliceRecord, bool), ControllerError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let key = claim_key(uid, index, attempt);
            let out = self
                .request_at(
                    namespace,
                    &d.spec,
                    crate::model::slice::HostDemand::default(),
                    &key,
                    Some(&d.pin),
                    Some(claim),
                )
                .await?;
            if out.slice.is_live() {
                if out.slice.node != d.pin.node || out.slice.gpus.first() != Some(&d.pin.gpu_uuid) {
                    return Err(ControllerError::BadRequest(format!(
                        "claim {uid} device {index} is already prepared on {} {:?}, not {} {}: the allocation changed",
                        out.slice.node, out.slice.gpus, d.pin.node, d.pin.gpu_uuid
                    )));
                }
                return Ok((out.slice, out.replayed));
            }
            // An earlier preparation of this device is over (the claim was unprepared): the next
            // attempt makes a new slice.
        }
        Err(ControllerError::BadRequest(format!(
            "claim {uid} device {index} was prepared and unprepared {MAX_ATTEMPTS} times"
        )))
    }

    /// Releases every live slice of claim `uid` on `node`; answers them after the release.
    pub async fn unprepare_claim(
        &self,
        node: &str,
        uid: &str,
    ) -> Result<Vec<SliceRecord>, ControllerError> {
        self.ensure_leading()?;
        let ids: Vec<String> = self.with_state(|st| {
            st.live_on_node(node)
                .filter(|s| is_claim_slice(s, uid))
                .map(|s| s.id.clone())
                .collect()
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(
                self.release_as(&id, "ResourceClaim unprepared", true)
                    .await?,
            );
        }
        if !out.is_empty() {
            info!(claim = uid, node, slices = out.len(), "claim unprepared");
        }
        Ok(out)
    }
}
