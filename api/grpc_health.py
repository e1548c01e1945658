"""grpc.health.v1 for the gRPC front: grpcio-health-checking's servicer fed from the state."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2

from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api.server_state import ServerState

SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class HealthServicer(grpc_health.aio.HealthServicer):
    """grpc.health.v1: grpcio-health-checking's servicer, fed from the shared state (SERVING only
    when requests can be served, for "" and the generation service). `Check` reads the state;
    while anyone `Watch`es, a task follows the state and publishes each change to the watchers.
    """

    FOLLOW_S = 0.1  # how often the state is read while a watcher is connected

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        self._published: int | None = None
        self._watchers = 0
        self._follower: asyncio.Task | None = None

    async def _publish(self) -> None:
        ok = self.state.health()[0] == 200
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != self._published:
            self._published = status
            for service in ("", SERVICE):
                await self.set(service, status)

    async def _follow(self) -> None:
        while self._watchers:
            await self._publish()
            await asyncio.sleep(self.FOLLOW_S)

    async def Check(self, request, context):  # noqa: N802
        await self._publish()
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return await super().Check(request, context)

    async def Watch(self, request, context):  # noqa: N802
        await self._publish()
        self._watchers += 1
        if self._follower is None or self._follower.done():
            self._follower = asyncio.ensure_future(self._follow())
        try:
            await super().Watch(request, context)
        finally:
            self._watchers -= 1
            if not self._watchers and self._follower is not None:
                self._follower.cancel()  # nobody left to publish to
