"""The ingress of parley's Serve application: the OpenAI API and the web UI, each configured by its own command's
flags (`parley api`, `parley web`), reaching the model deployments through their handles (`ServeCluster`)."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from parley.ray.cluster import ServeCluster
from parley.ray.gateway import Gateway
from parley.ray.server_flags import api_settings_of, web_settings_of

log = logging.getLogger("parley.ray")


@serve.ingress()
class Ingress:
    def __init__(self, models: list[DeploymentHandle], api_flags: list[str], web_flags: list[str] | None):
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("httpx").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
        self.models = models
        self.api_settings = api_settings_of(api_flags)
        self.web_settings = web_settings_of(web_flags) if web_flags is not None else None

    def __serve_build_asgi_app__(self):
        from parley.serving.api import create_app as create_api
        from parley.web.app import create_app as create_web

        silence = self.api_settings.worker_timeout_s
        api = create_api(self.api_settings, cluster=ServeCluster(self.models, silence_s=silence))
        web = None
        if self.web_settings is not None:
            web = create_web(self.web_settings, cluster=ServeCluster(self.models, clamp_max_tokens=True,
                                                                    silence_s=silence))
        log.info("ingress up: the API%s, over %d model deployment(s)", " and the web UI" if web else "",
                 len(self.models))
        return Gateway(api, web)
