"""The service's health verdict, the one `/health` (and gRPC's health service) reports: the model
replica's own answer joined with the Serve controller's view of the model deployment."""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..core.errors import BgeM3Error
from .dispatch import call_model
from .errors import UnhealthyError


class ModelHealth:
    """Asks the model deployment behind `model`, each question within `timeout_s`."""

    def __init__(self, model: DeploymentHandle, timeout_s: float):
        self._model, self._timeout_s = model, timeout_s

    async def verdict(self) -> dict:
        """`{"status": "ok" | "degraded", "model": <controller's view or None>}`: degraded while a model replica
        is missing or starting. `UnhealthyError` with the reason, Serve's own message for a failed model
        deployment included, when the model does not answer."""
        info, status = await asyncio.gather(call_model(self._model, "info", timeout=self._timeout_s),
                                            self.status(), return_exceptions=True)
        status = None if isinstance(status, BaseException) else status
        if isinstance(info, BaseException):
            reason = "model deployment did not answer in time (loading or overloaded)" if isinstance(
                info, TimeoutError) else f"model deployment error ({type(info).__name__})" + (
                f": {info}" if isinstance(info, BgeM3Error) else "")
            if status is not None and status["status"] != "HEALTHY":
                reason += f"; deployment {status['status']}: {status['message'] or status['replicas']}"
            raise UnhealthyError(reason)
        degraded = status is not None and (status["status"] != "HEALTHY" or set(status["replicas"]) != {"RUNNING"})
        return {"status": "degraded" if degraded else "ok", "model": status}

    async def status(self) -> dict | None:
        """The model deployment as the Serve controller sees it: status, replicas per state, message; None
        when the controller does not answer."""
        loop = asyncio.get_running_loop()
        try:
            overview = await asyncio.wait_for(loop.run_in_executor(None, serve.status), self._timeout_s)
            deployment = overview.applications[self._model.app_name].deployments[self._model.deployment_name]
        except Exception:  # the controller is busy or restarting: health falls back to the model's answer
            return None
        return {"status": str(getattr(deployment.status, "value", deployment.status)),
                "message": _last_error_line(deployment.message),
                "replicas": {str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()
                             if n}}


def _last_error_line(message: str) -> str:
    """Serve's failure messages end with the replica's traceback; its last line names the error."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
        return f"{lines[0]} {lines[-1]}"
    return " ".join(lines)
