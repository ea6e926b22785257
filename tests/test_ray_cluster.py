"""jobs.ray_cluster on a real local Ray head (the session's ``ray_cluster``): its nodes, the
gptdash jobs on it, a run's latest job and its log tail; and one readable line when the
address leads nowhere. The run ids here are far above any a test's store gives, so these
jobs never take the submission id of a real run of another test on the same cluster."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
from ray_support import RayCluster, submit_python

from gptcore.errors import GptdashError
from jobs import ray_cluster

RUN = 900_001
HUNDRED_LINES = "for i in range(1, 101): print('line', i)"


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster) -> RayCluster:
    """The session's cluster with run RUN's attempts 2 and 10 ended, and a job not ours."""
    submit_python(ray_cluster.address, f"gptdash-run-{RUN}-2", "print('attempt 2')")
    submit_python(ray_cluster.address, f"gptdash-run-{RUN}-10", HUNDRED_LINES)
    submit_python(ray_cluster.address, f"somebody-else-{RUN}", "print('not gptdash')")
    return ray_cluster


def test_submission_ids_of_gptdash_jobs_give_run_and_attempt():
    assert ray_cluster.parse_submission_id("gptdash-run-12-3") == (12, 3)
    for other in ("gptdash-run-12", "raysubmit_abc", "gptdash-run-x-1", "gptdash-run-1-2-3"):
        assert ray_cluster.parse_submission_id(other) is None


def test_nodes_lists_the_head_first_alive_with_its_cpus(cluster):
    nodes = ray_cluster.nodes(cluster.address)
    head = nodes[0]
    assert head.is_head and head.alive
    assert head.cpus == 2 and head.gpus == 0
    assert head.node_id and head.name


def test_jobs_lists_only_gptdash_jobs_with_run_attempt_status_and_node(cluster):
    found = [j for j in ray_cluster.jobs(cluster.address) if j.run_id == RUN]
    assert [j.attempt for j in found] == [10, 2]  # newest attempt first, by number
    assert all(j.status == "SUCCEEDED" for j in found)
    node_ids = {n.node_id for n in ray_cluster.nodes(cluster.address)}
    assert all(j.node_id in node_ids for j in found)
    assert all(j.started_at and j.ended_at and j.ended_at >= j.started_at for j in found)
    every = ray_cluster.jobs(cluster.address)
    assert all(j.submission_id.startswith("gptdash-run-") for j in every)


def test_a_runs_latest_job_is_its_highest_attempt_and_none_for_a_run_never_on_ray(cluster):
    latest = ray_cluster.latest_job(cluster.address, RUN)
    assert latest.submission_id == f"gptdash-run-{RUN}-10"  # not "-2", which sorts after
    assert ray_cluster.latest_job(cluster.address, RUN + 1) is None


def test_log_tail_is_the_last_lines_of_the_jobs_output(cluster):
    tail = ray_cluster.log_tail(cluster.address, f"gptdash-run-{RUN}-10", lines=3)
    assert tail == "line 98\nline 99\nline 100"


def test_an_address_without_scheme_is_taken_as_http(cluster):
    bare = cluster.address.removeprefix("http://") + "/"
    assert ray_cluster.nodes(bare)[0].node_id == ray_cluster.nodes(cluster.address)[0].node_id


def _one_line(call, *args) -> str:
    with pytest.raises(GptdashError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and ray_cluster.RAY_ADDRESS_ENV in message
    return message


def test_an_address_with_nothing_behind_it_is_one_line_naming_it():
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for call in (ray_cluster.nodes, ray_cluster.jobs):
        message = _one_line(call, address)
        assert address in message and "No Ray cluster answers" in message
    _one_line(ray_cluster.log_tail, address, "gptdash-run-1-1")


@pytest.fixture
def not_a_dashboard() -> Iterator[str]:
    """An HTTP server that answers every request with an error, as a wrong service would."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_a_ray_dashboard_is_one_line(not_a_dashboard):
    for call in (ray_cluster.nodes, ray_cluster.jobs):
        assert "did not answer as a Ray dashboard" in _one_line(call, not_a_dashboard)


@pytest.mark.parametrize(("status", "body", "got"), [
    (401, "Unauthorized: Missing authentication token", "got no token"),
    (403, "Forbidden: Invalid authentication token", "refused the token given")])
def test_a_cluster_with_token_authentication_says_how_to_give_the_token(status, body, got):
    class TokenAuth(http.server.BaseHTTPRequestHandler):
        """What a head started with RAY_AUTH_MODE=token answers a request without its token."""

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for call in (ray_cluster.nodes, ray_cluster.jobs):
            with pytest.raises(GptdashError) as caught:
                call(address)
            assert str(caught.value) == (f"The Ray cluster at {address} uses token "
                                         f"authentication and {got}: set "
                                         f"{ray_cluster.AUTH_HINT}")
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_that_is_no_url_says_what_to_give():
    for bad in ("ftp://head:8265", "http://", "http://head:port"):
        assert "give one like http://head:8265" in _one_line(ray_cluster.nodes, bad)


def test_without_ray_installed_the_views_say_how_to_install_it(not_a_dashboard, monkeypatch):
    for module in ("ray.job_submission", "ray.util.state"):  # as if the extra were missing
        monkeypatch.setitem(sys.modules, module, None)
    for call in (ray_cluster.nodes, ray_cluster.jobs):
        with pytest.raises(GptdashError, match=r"Ray is not installed here: pip install"):
            call(not_a_dashboard)
