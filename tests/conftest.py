"""Session fixtures shared by several test modules."""

import os
import time

import pytest

from _slurm import ENV_SWITCH, HOW_TO_RUN, LocalSlurm, install, why_not

_REPORT: dict = {}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM (munged + slurmctld + slurmd, as root) for this session, with ``SLURM_CONF`` set.

    Skips, saying how to run the tests, where it cannot run (not root, not
    Debian-like, no apt). ``PATCHWORKS_TEST_SLURM=0`` skips it;
    ``PATCHWORKS_TEST_SLURM=1`` (set by ``.ci/run``) makes a failed install
    an error instead of a skip.
    """
    required = os.environ.get(ENV_SWITCH) == "1"
    reason = why_not()
    if reason:
        pytest.skip(f"SLURM tests skipped ({reason}): {HOW_TO_RUN}")
    root = tmp_path_factory.mktemp("slurm")
    try:
        _REPORT["install_s"] = install(root / "apt.log")
    except RuntimeError as exc:
        (pytest.fail if required else pytest.skip)(f"could not install SLURM: {exc}; {HOW_TO_RUN}")
    cluster = LocalSlurm(root)
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        try:
            _REPORT["startup_s"] = cluster.start()
            mp.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
        finally:
            t1 = time.monotonic()
            cluster.stop()
            _REPORT.update(stop_s=time.monotonic() - t1, held_s=t1 - t0, leftovers=cluster.leftovers())


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        r = _REPORT
        terminalreporter.write_line(
            f"SLURM fixture: apt install {r.get('install_s', 0):.1f} s, daemons up {r.get('startup_s', 0):.1f} s, "
            f"held {r.get('held_s', 0):.1f} s, stopped {r.get('stop_s', 0):.1f} s, "
            f"processes left behind: {r.get('leftovers', [])}")


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 API server on 127.0.0.1 for this session (``.storage_options``, ``.make_bucket()``)."""
    from _servers import start_s3

    server = start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's S3 server; returns its name."""
    return s3_server.make_bucket()


@pytest.fixture
def http_root(tmp_path):
    """``(directory, url)``: a static HTTP server on 127.0.0.1 serving a fresh directory."""
    from _servers import start_http

    root = tmp_path / "www"
    root.mkdir()
    server = start_http(root)
    try:
        yield root, server.url
    finally:
        server.stop()


@pytest.fixture
def http_server(tmp_path):
    """The server object of ``http_root`` (``.url``, ``.root_path``, ``.requests`` counted by kind)."""
    from pathlib import Path

    from _servers import start_http

    root = tmp_path / "www-counted"
    root.mkdir()
    server = start_http(root)
    server.root_path = Path(root)
    try:
        yield server
    finally:
        server.stop()
