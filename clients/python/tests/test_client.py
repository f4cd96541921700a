"""The Python client against the real controller binary with a simulated agent (`greenslice
controller --insecure` and `greenslice-agent --backend sim`, from GREENSLICE_BIN_DIR, default the
workspace's target/debug): request, list pages, watch that resumes, refusals with their reasons, the
report, and the README's example as written."""

import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent))
subprocess.run([sys.executable, str(HERE.parent / "generate.py")], check=True)

from greenslice_client import Client, GreensliceError, tenant_pb2, types_pb2  # noqa: E402

BIN = pathlib.Path(os.environ.get("GREENSLICE_BIN_DIR", ROOT / "target" / "debug"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def controller():
    for b in ("greenslice", "greenslice-agent"):
        if not (BIN / b).exists():
            pytest.fail(f"{BIN / b} is missing: build the workspace first (cargo build), or set GREENSLICE_BIN_DIR")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tempfile.TemporaryDirectory()
    ctl = subprocess.Popen(
        [str(BIN / "greenslice"), "controller", "--insecure", "--listen", f"127.0.0.1:{port}", "--ledger", "memory"],
        stdout=subprocess.DEVNULL,
        stderr=open(pathlib.Path(logs.name) / "controller.log", "w"),
    )
    agent = subprocess.Popen(
        [str(BIN / "greenslice-agent"), "--controller", url, "--node", "py-node", "--backend", "sim", "--machine", "dgx-h100", "--mig-gpus", "2"],
        stdout=subprocess.DEVNULL,
        stderr=open(pathlib.Path(logs.name) / "agent.log", "w"),
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                with Client(url) as c:
                    if any(n.connected for n in c.inventory().nodes):
                        break
            except GreensliceError:
                pass
            if time.time() > deadline:
                raise RuntimeError("controller or agent did not come up: " + (pathlib.Path(logs.name) / "controller.log").read_text())
            time.sleep(0.2)
        yield url
    finally:
        agent.kill()
        ctl.kill()
        agent.wait()
        ctl.wait()
        logs.cleanup()


def test_request_list_and_release(controller):
    with Client(controller, tenant="py-team") as c:
        s = c.request(share=0.25, memory_bytes=4 << 30)
        assert s.state == types_pb2.SLICE_STATE_ACTIVE and s.tenant == "py-team"
        assert s.id in [x.id for x in c.list()]
        # Pages of one slice each still list every slice once.
        more = [c.request(share=0.1, memory_bytes=1 << 30).id for _ in range(3)]
        pages = list(c.list_pages(page_size=1))
        assert len(pages) >= 4 and all(len(p.slices) == 1 for p in pages)
        ids = [x.id for p in pages for x in p.slices]
        assert len(ids) == len(set(ids)) and set(more + [s.id]) <= set(ids)
        for i in more + [s.id]:
            assert c.release(i).state == types_pb2.SLICE_STATE_RELEASED
        assert c.inventory().gpus_total == 8


def test_refusals_carry_their_reason_and_details(controller):
    with Client(controller, tenant="py-team") as c:
        with pytest.raises(GreensliceError) as e:
            c.request(whole=9)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.reason == "INVALID_FIELD"
        assert e.value.field_violations[0][0] == "spec.whole.count"
        with pytest.raises(GreensliceError) as e:
            c.get("s-nope")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert e.value.reason == "SLICE_NOT_FOUND"
        assert e.value.resource == ("greenslice.v1.Slice", "s-nope")
        with pytest.raises(GreensliceError) as e:
            c.request(whole=8)
        assert e.value.reason == "NO_CAPACITY"
        with pytest.raises(GreensliceError) as e:
            next(c.watch(start_revision=1))
        assert e.value.reason == "REVISION_COMPACTED"


def test_requests_carry_the_host_cpu_and_memory_of_their_workload(controller):
    with Client(controller, tenant="py-team") as c:
        # More CPU than the node (112 cores) has: no room; more than any node may report: invalid.
        with pytest.raises(GreensliceError) as e:
            c.request(share=0.1, memory_bytes=1 << 30, host_cpu_milli=200_000)
        assert e.value.reason == "NO_CAPACITY"
        assert "200 CPU cores" in str(e.value)
        with pytest.raises(GreensliceError) as e:
            c.request(share=0.1, memory_bytes=1 << 30, host_cpu_milli=2_000_000_000)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.field_violations[0][0] == "host_cpu_milli"
        s = c.request(share=0.1, memory_bytes=1 << 30, host_cpu_milli=4000, host_memory_bytes=16 << 30)
        assert c.release(s.id).state == types_pb2.SLICE_STATE_RELEASED


def test_watch_resumes_from_its_last_revision(controller):
    with Client(controller, tenant="py-team") as c:
        head = next(c.list_pages()).revision
        w = c.watch(start_revision=head)
        s = c.request(share=0.1, memory_bytes=1 << 30)
        first = next(w)
        assert first.slice.id == s.id and first.revision == head + 1
        w.close()  # gone for a while
        c.release(s.id)
        # Resumed from the last revision it saw: exactly the missed events, in order.
        w2 = c.watch(start_revision=first.revision)
        got = [next(w2), next(w2)]
        w2.close()
        assert [e.revision for e in got] == [first.revision + 1, first.revision + 2]
        assert [e.slice.state for e in got] == [types_pb2.SLICE_STATE_RELEASING, types_pb2.SLICE_STATE_RELEASED]
        assert all(e.kind == tenant_pb2.SLICE_EVENT_KIND_STATE_CHANGED for e in got)


def test_report(controller):
    with Client(controller) as c:
        r = c.report()
        assert "tenants" in r and r["to_ms"] > r["from_ms"], sorted(r)


def test_the_readme_example_runs(controller, monkeypatch):
    text = (HERE.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.setenv("GREENSLICE_CONTROLLER", controller)
    monkeypatch.setenv("GREENSLICE_TENANT", "notebook")
    exec(compile(code, "README.md", "exec"), {})
