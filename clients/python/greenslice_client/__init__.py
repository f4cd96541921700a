"""A Python client of the greenslice controller: request, list, watch and release GPU slices, and
the ops report.

Connects like the `greenslice` CLI, from the same environment variables: GREENSLICE_CONTROLLER
(default http://127.0.0.1:7070), GREENSLICE_TOKEN (bearer token), GREENSLICE_CA_CERT (PEM CA for
https URLs), GREENSLICE_TENANT (the tenant to act for). Refusals raise :class:`GreensliceError` with
the controller's stable reason and details (see docs/API.md, "Errors").
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import grpc
from google.rpc import error_details_pb2, status_pb2

_GEN = pathlib.Path(__file__).resolve().parent / "_gen"
if not (_GEN / "greenslice" / "v1" / "tenant_pb2.py").exists():
    raise ImportError(
        "greenslice_client: the gRPC stubs are not generated; run `python generate.py` in clients/python"
    )
if str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))

from greenslice.v1 import ops_pb2, ops_pb2_grpc, tenant_pb2, tenant_pb2_grpc, types_pb2  # noqa: E402

__all__ = ["Client", "GreensliceError", "tenant_pb2", "ops_pb2", "types_pb2"]


@dataclass
class GreensliceError(Exception):
    """A refusal: the gRPC code, the message a person reads, and what a program acts on."""

    code: grpc.StatusCode
    message: str
    #: The stable ErrorInfo reason (e.g. NO_CAPACITY, REVISION_COMPACTED); "" when none was sent.
    reason: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    #: BadRequest field violations: (field, description).
    field_violations: List[tuple] = field(default_factory=list)
    #: QuotaFailure violations: (subject, description).
    quota_violations: List[tuple] = field(default_factory=list)
    #: ResourceInfo: (type, name), for NOT_FOUND.
    resource: Optional[tuple] = None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" + (f" [{self.reason}]" if self.reason else "")

    @staticmethod
    def from_rpc(e: grpc.RpcError) -> "GreensliceError":
        err = GreensliceError(code=e.code(), message=e.details() or "")
        for key, value in e.trailing_metadata() or ():
            if key != "grpc-status-details-bin":
                continue
            st = status_pb2.Status.FromString(value)
            for any_ in st.details:
                if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    any_.Unpack(info)
                    err.reason, err.metadata = info.reason, dict(info.metadata)
                elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    any_.Unpack(br)
                    err.field_violations = [(v.field, v.description) for v in br.field_violations]
                elif any_.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                    qf = error_details_pb2.QuotaFailure()
                    any_.Unpack(qf)
                    err.quota_violations = [(v.subject, v.description) for v in qf.violations]
                elif any_.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                    ri = error_details_pb2.ResourceInfo()
                    any_.Unpack(ri)
                    err.resource = (ri.resource_type, ri.resource_name)
        return err


def _call(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except grpc.RpcError as e:
        raise GreensliceError.from_rpc(e) from None


class Client:
    """A connection to the controller's tenant and ops services."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        ca_cert: Optional[str] = None,
        tenant: Optional[str] = None,
    ) -> None:
        url = url or os.environ.get("GREENSLICE_CONTROLLER", "http://127.0.0.1:7070")
        token = token if token is not None else os.environ.get("GREENSLICE_TOKEN")
        ca_cert = ca_cert or os.environ.get("GREENSLICE_CA_CERT")
        self.tenant = tenant if tenant is not None else os.environ.get("GREENSLICE_TENANT", "")
        target = url.split("://", 1)[-1].rstrip("/")
        if url.startswith("https://"):
            root = pathlib.Path(ca_cert).read_bytes() if ca_cert else None
            creds = grpc.ssl_channel_credentials(root_certificates=root)
            if token:
                creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
            self._channel = grpc.secure_channel(target, creds)
            self._metadata = ()
        else:
            # Plain http is for the loopback (`--insecure`); a token still goes along when given.
            self._channel = grpc.insecure_channel(target)
            self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tenant_api = tenant_pb2_grpc.TenantServiceStub(self._channel)
        self._ops_api = ops_pb2_grpc.OpsServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---- tenants ----------------------------------------------------------------------------

    def request(
        self,
        *,
        whole: Optional[int] = None,
        mig: Optional[str] = None,
        share: Optional[float] = None,
        memory_bytes: int = 0,
        model: str = "",
        slice_class: str = "",
        idempotency_key: str = "",
        host_cpu_milli: int = 0,
        host_memory_bytes: int = 0,
    ) -> types_pb2.Slice:
        """Requests one slice (exactly one of whole, mig, share) and returns it ACTIVE.

        host_cpu_milli (milli-cores) and host_memory_bytes are what the workload needs of its
        node's CPU and memory; 0 (the default) says nothing. The slice is placed only where they
        fit beside the other live slices' own."""
        if [whole is not None, mig is not None, share is not None].count(True) != 1:
            raise ValueError("give exactly one of whole, mig or share")
        spec = types_pb2.SliceSpec(gpu_model=model, slice_class=slice_class)
        if whole is not None:
            spec.whole.count = whole
        elif mig is not None:
            spec.mig.profile = mig
        else:
            spec.share.compute_fraction = share
            spec.share.memory_bytes = memory_bytes
        r = _call(
            self._tenant_api.RequestSlice,
            tenant_pb2.RequestSliceRequest(
                tenant=self.tenant,
                spec=spec,
                idempotency_key=idempotency_key,
                host_cpu_milli=host_cpu_milli,
                host_memory_bytes=host_memory_bytes,
            ),
            metadata=self._metadata,
        )
        return r.slice

    def get(self, slice_id: str) -> types_pb2.Slice:
        return _call(self._tenant_api.GetSlice, tenant_pb2.GetSliceRequest(slice_id=slice_id), metadata=self._metadata).slice

    def release(self, slice_id: str) -> types_pb2.Slice:
        r = _call(
            self._tenant_api.ReleaseSlice, tenant_pb2.ReleaseSliceRequest(slice_id=slice_id), metadata=self._metadata
        )
        return r.slice

    def list_pages(self, *, include_terminal: bool = False, node: str = "", page_size: int = 0) -> Iterator[tenant_pb2.ListSlicesResponse]:
        """Every page of the caller's tenant's slices (all tenants' for ops without a tenant)."""
        req = tenant_pb2.ListSlicesRequest(
            tenant=self.tenant, node=node, include_terminal=include_terminal, page_size=page_size
        )
        while True:
            page = _call(self._tenant_api.ListSlices, req, metadata=self._metadata)
            yield page
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    def list(self, *, include_terminal: bool = False, node: str = "") -> List[types_pb2.Slice]:
        """Every slice, page after page, oldest first."""
        return [s for p in self.list_pages(include_terminal=include_terminal, node=node) for s in p.slices]

    def watch(self, *, start_revision: int = 0, reconnect_s: float = 1.0, bookmarks: bool = True) -> Iterator[tenant_pb2.SliceEvent]:
        """Slice events as they happen, as an iterator that resumes: when the stream breaks (network,
        controller restart) it reconnects from the last revision seen, so each event comes once and
        in order. Bookmarks are consumed here (they only move the resume point). When the events to
        resume from are no longer kept it raises GreensliceError with reason REVISION_COMPACTED:
        list again and watch from the list's revision."""
        last = start_revision
        while True:
            stream = self._tenant_api.WatchSlices(
                tenant_pb2.WatchSlicesRequest(tenant=self.tenant, start_revision=last, bookmarks=bookmarks),
                metadata=self._metadata,
            )
            try:
                for ev in stream:
                    last = ev.revision or last
                    if ev.kind == tenant_pb2.SLICE_EVENT_KIND_BOOKMARK:
                        continue
                    yield ev
                return
            except grpc.RpcError as e:
                err = GreensliceError.from_rpc(e)
                if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS) and last:
                    time.sleep(reconnect_s)
                    continue
                raise err from None
            finally:
                stream.cancel()

    # ---- ops ----------------------------------------------------------------------------------

    def inventory(self) -> ops_pb2.InventoryResponse:
        """The whole inventory, its node pages merged."""
        req = ops_pb2.InventoryRequest()
        out = ops_pb2.InventoryResponse()
        while True:
            page = _call(self._ops_api.Inventory, req, metadata=self._metadata)
            out.nodes.extend(page.nodes)
            out.capacity.extend(page.capacity)
            out.slices.extend(page.slices)
            out.gpus_total, out.allocated_milli, out.nodes_total = page.gpus_total, page.allocated_milli, page.nodes_total
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    def report(self, *, from_unix_ms: int = 0, to_unix_ms: int = 0) -> dict:
        """The energy and CO2e report over a period as a dict (schema: docs/ENERGY.md)."""
        import json

        r = _call(
            self._ops_api.EnergyReport,
            ops_pb2.EnergyReportRequest(from_unix_ms=from_unix_ms, to_unix_ms=to_unix_ms, tenant=self.tenant),
            metadata=self._metadata,
        )
        return json.loads(r.report_json)
