"""The ingress of parley on Ray Serve: the OpenAI API and the web UI, each configured by its own command's flags
(`parley api`, `parley web`), reaching the models through their deployments' handles (`ServeCluster`)."""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from parley.ray.cluster import ServeCluster
from parley.ray.config import MODEL_DEPLOYMENT
from parley.ray.gateway import Gateway
from parley.ray.server_flags import api_settings_of, web_settings_of

log = logging.getLogger("parley.ray")
# An application being deleted serves no more; one being deployed or updated, or unhealthy, may still have replicas
# that serve (a request to one that has none fails over, then says the model is unavailable).
_GONE = {"DELETING"}


async def model_applications(prefix: str, known: dict[str, DeploymentHandle]) -> dict[str, DeploymentHandle]:
    """The model applications serving now (by their names' prefix), each with its deployment's handle (those in
    `known` kept)."""
    status = await asyncio.to_thread(serve.status)  # a call to Serve's controller
    names = {name for name, app in status.applications.items() if name.startswith(prefix) and app.status not in _GONE}
    if names != set(known):
        log.info("model applications: %s (%s)", ", ".join(sorted(names)) or "none",
                 ", ".join(f"{n} {status.applications[n].status}" for n in sorted(names)))
    return {name: known.get(name) or serve.get_deployment_handle(MODEL_DEPLOYMENT, name) for name in sorted(names)}


@serve.ingress()
class Ingress:
    def __init__(self, models_prefix: str, api_flags: list[str], web_flags: list[str] | None):
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("httpx").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
        self.models_prefix = models_prefix
        self.api_settings = api_settings_of(api_flags)
        self.web_settings = web_settings_of(web_flags) if web_flags is not None else None
        self._handles: dict[str, DeploymentHandle] = {}

    async def model_applications(self) -> dict[str, DeploymentHandle]:
        self._handles = await model_applications(self.models_prefix, self._handles)
        return self._handles

    def __serve_build_asgi_app__(self):
        from parley.serving.api import create_app as create_api
        from parley.web.app import create_app as create_web

        silence = self.api_settings.worker_timeout_s
        api = create_api(self.api_settings, cluster=ServeCluster(self.model_applications, silence_s=silence))
        web = None
        if self.web_settings is not None:
            web = create_web(self.web_settings, cluster=ServeCluster(self.model_applications, clamp_max_tokens=True,
                                                                    silence_s=silence))
        log.info("ingress up: the API%s, over the model applications %s*", " and the web UI" if web else "",
                 self.models_prefix)
        return Gateway(api, web)
