"""Replicas on Ray Serve: the same app, built once in each replica (``pip install 'leenet-runtime[ray]'``).

Ray Serve runs the ASGI app of :func:`leenet_runtime.app.create_app` unchanged in every replica
(its lifespan too, so each replica has its own scheduler, queues and metrics) and balances
requests between them behind its HTTP proxy::

    import ray
    from ray import serve
    from leenet_runtime.app import ServeConfig
    from leenet_runtime.ray_serve import application

    ray.init()
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(application(ServeConfig("digits-export"), replicas=2), route_prefix="/")

or, from the command line, ``leenet-runtime serve digits-export --ray-replicas 2``.
"""

from __future__ import annotations

from ray import serve

from leenet_runtime.app import ServeConfig, create_app


def application(config: ServeConfig, *, replicas: int = 2, cpus_per_replica: float = 1.0):
    """A Ray Serve application of ``replicas`` copies of the server of ``config``.

    Each replica loads the export itself (the app is built in the replica, not pickled) and
    asks Ray for ``cpus_per_replica`` CPUs; give each as many ``config.threads``.
    """
    text = config.to_json()

    @serve.deployment(name="leenet", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica})
    @serve.ingress(lambda: create_app(ServeConfig.from_json(text)))
    class Replica:
        """One copy of the LEENet server."""

    return Replica.bind()
