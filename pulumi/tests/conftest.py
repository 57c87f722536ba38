"""Fixtures of the Pulumi program's tests (the harness is in harness.py)."""

from __future__ import annotations

import asyncio
import json

import pulumi
import pytest
from pulumi.runtime.stack import wait_for_rpcs

from harness import AZ, IMAGE, REGION, Deployment, Recorder, RecordingMonitor, infra


@pytest.fixture
def binaries(tmp_path):
    """Fake release binaries for both architectures (the program only hashes and uploads them)."""
    paths = {}
    for arch in ("aarch64", "x86_64"):
        path = tmp_path / f"spotkeeper-{arch}"
        path.write_bytes(f"not really spotkeeper for {arch}\n".encode())
        paths[arch] = path
    return paths


@pytest.fixture
def deploy(binaries):
    """deploy(stack="dev", **config) runs the program and returns a Deployment."""

    def run(stack: str = "dev", _subnet_az: str | None = None, **config) -> Deployment:
        config.setdefault("availabilityZone", AZ)
        config.setdefault("image", IMAGE)
        arch = infra.arch_of(config.get("instanceType", infra.DEFAULT_INSTANCE_TYPE))
        config.setdefault("binary", str(binaries[arch]))
        # A key given as None is left out of the stack's config.
        config = {key: value for key, value in config.items() if value is not None}
        mocks = Recorder(subnet_az=_subnet_az)
        pulumi.runtime.set_mocks(mocks, project="spotkeeper", stack=stack, preview=False, monitor=RecordingMonitor(mocks))
        values = {"aws:region": REGION}
        for key, value in config.items():
            values[f"spotkeeper:{key}"] = value if isinstance(value, str) else json.dumps(value)
        pulumi.runtime.set_all_config(values)
        resources = infra.deploy()
        asyncio.get_event_loop().run_until_complete(wait_for_rpcs())
        return Deployment(resources, mocks)

    return run
