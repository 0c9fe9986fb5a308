"""`llmserve serve --replicas N`: engine replicas behind one endpoint, on Ray Serve.

What runs where:
- the front is the ordinary server (llmserve.server: routes, auth, errors, shedding, response cache,
  drain), run by `llmserve serve` itself; its engine is a ReplicaEngine (client.py), which prepares
  requests locally and streams their engine work from replicas through a DeploymentHandle;
- each replica (replica.py) is a Ray Serve deployment that owns one AsyncEngine;
- Ray Serve's request router, in the front's process, picks a replica per request: prefix affinity
  on the prompt's leading block hashes, else the less loaded of two (router.py).

Nothing here is imported by the single-process server: only this package imports Ray.
"""
