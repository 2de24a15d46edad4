"""The rollout simulator: Kubernetes played on one machine over loopback.

``simulator`` is the reusable harness (pods, a probing load balancer, a load generator
and the rolling update); ``app`` is the ASGI app the pods host; ``bench/rollout.py`` is
the command line for longer runs.
"""
